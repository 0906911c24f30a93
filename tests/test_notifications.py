"""Mentions become notifications: live, replayed, listed, and marked read."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from productflo.auth import mint
from productflo.handlers.mentions import mentioned
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio


def test_mentions_are_found_in_text() -> None:
    text = "@bob, can you and @carol.smith check this? (mail a@b.com, not @bob again)."
    assert mentioned(text) == ["bob", "carol.smith"]


async def _listed(server: ServerThread, user: str, **params: Any) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {mint(server.settings, user)}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/users/me/notifications", params=params)
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()["notifications"]
    return found


async def _until_listed(server: ServerThread, user: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while len(found := await _listed(server, user)) < count:
            await asyncio.sleep(0.05)
    return found


async def test_an_online_user_is_notified_live(connect: Any, server: ServerThread) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")  # not even in the room
    await alice.chat("design", "@bob have a look at the enclosure")
    note = await bob.recv_code("notification")
    assert note["status"] == "success"
    assert note["user_id"] == "bob"
    assert note["room_id"] == "design"
    details = note["data"]["details"]
    assert details["kind"] == "mention" and details["by"] == "alice"
    assert details["text"] == "@bob have a look at the enclosure"
    assert isinstance(note["event_id"], int)
    await alice.recv_code("chat_response")
    assert await alice.nothing_within(0.3), "the sender is not notified"


async def test_an_offline_user_gets_the_notification_on_resume(
    connect: Any, server: ServerThread
) -> None:
    bob = await connect("/ws?user_id=bob")
    last = bob.welcome["data"]["details"]["last_event_id"]
    await bob.close()
    alice = await connect("/ws?user_id=alice")
    await alice.chat("design", "ping @bob")
    await alice.recv_code("chat_response")
    await _until_listed(server, "bob", 1)
    bob = await connect(f"/ws?user_id=bob&last_event_id={last}")
    note = await bob.recv_code("notification")
    assert note["data"]["details"]["by"] == "alice"
    done = await bob.recv_code("system")
    assert done["data"]["details"]["replay_complete"] is True


async def test_notifications_are_listed_and_marked_read(connect: Any, server: ServerThread) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.chat("r", "@bob first")
    await alice.chat("r", "@bob second, and @alice is not notified of herself")
    listed = await _until_listed(server, "bob", 2)
    assert [n["details"]["text"][:12] for n in listed] == ["@bob second,", "@bob first"]
    assert all(n["read"] is False for n in listed)
    assert await _listed(server, "alice") == []

    headers = {"Authorization": f"Bearer {mint(server.settings, 'bob')}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        marked = await http.post(
            "/users/me/notifications/read", json={"up_to": listed[1]["event_id"]}
        )
        assert marked.status_code == 200
    async with asyncio.timeout(10):
        while len(await _listed(server, "bob", unread="true")) != 1:
            await asyncio.sleep(0.05)
    [unread] = await _listed(server, "bob", unread="true")
    assert unread["event_id"] == listed[0]["event_id"]


async def test_a_token_limited_to_some_rooms_lists_only_their_notifications(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.chat("design-a", "@bob in design")
    await alice.chat("finance", "@bob in finance")
    await _until_listed(server, "bob", 2)
    headers = {"Authorization": f"Bearer {mint(server.settings, 'bob', rooms=['design-*'])}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/users/me/notifications")
    assert [n["details"]["room_id"] for n in response.json()["notifications"]] == ["design-a"]


async def test_notifications_need_a_token(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/users/me/notifications")).status_code == 401
        assert (
            await http.post("/users/me/notifications/read", json={"up_to": 1})
        ).status_code == 401
