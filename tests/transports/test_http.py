"""GET /rooms/{room_id}/messages: history over HTTP with a Bearer user token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from productflo.auth import mint
from productflo.events.models import MAX_POSITION
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio


async def _fill(connect: Any, room: str, count: int) -> list[int]:
    """Send `count` chats to `room`; return their event ids."""
    alice = await connect("/ws?user_id=alice")
    for n in range(count):
        await alice.chat(room, f"m{n}")
    return [(await alice.recv_code("chat_response"))["event_id"] for _ in range(count)]


def _bearer(server: ServerThread, user: str = "reader") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(server.settings, user)}"}


async def test_pages_go_backwards_without_overlap_or_gap(
    connect: Any, server: ServerThread
) -> None:
    ids = await _fill(connect, "design", 25)
    seen: list[int] = []
    before: int | None = None
    pages = 0
    async with httpx.AsyncClient(base_url=server.http, headers=_bearer(server)) as http:
        while True:
            params = {"limit": 10} | ({"before": before} if before else {})
            response = await http.get("/rooms/design/messages", params=params)
            assert response.status_code == 200
            body = response.json()
            page = [e["event_id"] for e in body["events"] if e["code"] == "chat_response"]
            assert page == sorted(page)
            seen = page + seen
            pages += 1
            if not body["has_more"]:
                break
            before = body["events"][0]["event_id"]
    assert seen == ids
    assert pages == 3  # 26 events with the join: 10 + 10 + 6


async def test_the_page_holds_the_envelopes_clients_saw_live(
    connect: Any, server: ServerThread
) -> None:
    bob = await connect("/ws?user_id=bob")
    await bob.join("r")
    await bob.chat("r", "hello", client_msg_id="c1")
    live = await bob.recv_code("chat_response")
    async with httpx.AsyncClient(base_url=server.http, headers=_bearer(server)) as http:
        body = (await http.get("/rooms/r/messages")).json()
    assert body["has_more"] is False
    assert body["events"][-1] == live
    assert [e["data"]["details"]["action"] for e in body["events"][:1]] == ["join"]


async def test_a_room_with_no_events_is_an_empty_page(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.http, headers=_bearer(server)) as http:
        body = (await http.get("/rooms/empty/messages")).json()
    assert body == {"events": [], "has_more": False}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not.a.token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no token", "bad token", "not bearer"],
)
async def test_no_valid_bearer_token_is_401(server: ServerThread, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/rooms/r/messages")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "before=0", "before=x"])
async def test_bad_paging_parameters_are_refused(server: ServerThread, query: str) -> None:
    async with httpx.AsyncClient(base_url=server.http, headers=_bearer(server)) as http:
        response = await http.get(f"/rooms/r/messages?{query}")
    assert response.status_code == 422


async def test_the_history_message_pages_the_same_way(connect: Any, server: ServerThread) -> None:
    ids = await _fill(connect, "ws-room", 7)
    bob = await connect("/ws?user_id=bob")
    await bob.send({"code": "history", "room_id": "ws-room", "data": {"limit": 5}})
    newest = await bob.recv_code("history")
    assert newest["data"]["has_more"] is True
    assert [e["event_id"] for e in newest["data"]["events"]] == ids[-5:]
    first = newest["data"]["events"][0]["event_id"]
    await bob.send({"code": "history", "room_id": "ws-room", "data": {"before": first}})
    older = await bob.recv_code("history")
    assert older["data"]["has_more"] is False
    chats = [e["event_id"] for e in older["data"]["events"] if e["code"] == "chat_response"]
    assert chats == ids[:-5]


async def test_the_root_serves_a_web_client_of_the_native_protocol(server: ServerThread) -> None:
    """The page, its modules and its icon (tests/browser drives the client itself)."""
    async with httpx.AsyncClient(base_url=server.http) as http:
        page = await http.get("/")
        module = await http.get("/static/connection.js")
        icon = await http.get("/favicon.ico")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text
    assert module.status_code == 200
    assert "new WebSocket(" in module.text and "last_event_id" in module.text
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


HUGE = 10**30  # past any 64-bit integer


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", "/rooms/r/messages", {"before": HUGE}, None),
        ("GET", "/rooms/r/messages", {"limit": HUGE}, None),
        ("GET", "/users/me/notifications", {"limit": HUGE}, None),
        ("POST", "/users/me/notifications/read", {}, {"up_to": HUGE}),
        ("GET", "/admin/events", {"after": HUGE}, None),
        ("GET", "/admin/events", {"limit": HUGE}, None),
    ],
    ids=["before", "messages limit", "notifications limit", "up_to", "after", "audit limit"],
)
async def test_an_integer_past_64_bits_is_422_never_5xx(
    server: ServerThread, method: str, path: str, params: dict[str, int], body: Any
) -> None:
    headers = {"Authorization": f"Bearer {mint(server.settings, 'reader', admin=True)}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.request(method, path, params=params, json=body)
    assert response.status_code == 422, response.text


async def test_the_largest_position_is_a_valid_bound(connect: Any, server: ServerThread) -> None:
    """MAX_POSITION itself is accepted: the bound refuses only what a bigint cannot hold."""
    ids = await _fill(connect, "edge", 1)
    async with httpx.AsyncClient(base_url=server.http, headers=_bearer(server)) as http:
        page = await http.get("/rooms/edge/messages", params={"before": MAX_POSITION})
        marked = await http.post("/users/me/notifications/read", json={"up_to": MAX_POSITION})
    assert page.status_code == 200, page.text
    assert [e["event_id"] for e in page.json()["events"]][-1:] == ids
    assert marked.status_code == 200, marked.text
