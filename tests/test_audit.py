"""The audit: GET /admin/events and `productflo audit`, over events made by real clients."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest

from productflo import audit
from productflo.audit import AuditFilter
from productflo.auth import mint
from productflo.events.store import connect as connect_database
from tests.conftest import ServerThread
from tests.test_cli import clean_environment, run
from tests.test_documents import Editor

pytestmark = pytest.mark.anyio


@dataclass
class Scenario:
    """What `_play` did: the event ids the server acknowledged."""

    design_chats: list[int]
    ops_chats: list[int]


async def _refused(client: Any, frame: str | dict[str, Any]) -> str:
    """Send a frame the server refuses; return the error code it answers with."""
    await client.send(frame)
    error = await client.recv_until(lambda m: m["status"] == "error")
    code: str = error["data"]["details"]["error_code"]
    return code


async def _play(connect: Any) -> Scenario:
    """alice talks in `design`; bob in `ops`, with two refused messages between his chats."""
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await alice.join("design")
    design, ops = [], []
    for n in range(3):
        await alice.chat("design", f"design {n}")
        design.append((await alice.recv_code("chat_response"))["event_id"])
    await bob.chat("ops", "before")
    ops.append((await bob.recv_code("chat_response"))["event_id"])
    assert await _refused(bob, "this is { not json") == "INVALID_JSON"
    assert await _refused(bob, {"code": "dance", "room_id": "ops"}) == "UNSUPPORTED_MESSAGE_TYPE"
    # Bob's appends commit in the order he sent them: once this is acknowledged, so are the
    # rejections before it.
    await bob.chat("ops", "after")
    ops.append((await bob.recv_code("chat_response"))["event_id"])
    return Scenario(design, ops)


def _admin_headers(server: ServerThread) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(server.settings, 'ops', admin=True)}"}


async def _get(server: ServerThread, params: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http, headers=_admin_headers(server)) as http:
        return await http.get("/admin/events", params=params)


async def _events(server: ServerThread, **params: Any) -> list[dict[str, Any]]:
    response = await _get(server, params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"events", "next_after"}
    events: list[dict[str, Any]] = body["events"]
    return events


# -- the objects and the filters ---------------------------------------------------------------


async def test_every_event_is_listed_oldest_first_in_the_spec_shape(
    connect: Any, server: ServerThread
) -> None:
    played = await _play(connect)
    events = await _events(server)
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert set(played.design_chats + played.ops_chats) <= set(ids)
    keys = {"event_id", "type", "stream", "code", "user_id", "room_id", "data", "metadata"}
    for event in events:
        assert set(event) == keys | {"recorded_at"}
        assert event["recorded_at"].endswith("Z")
        assert event["user_id"] == event["metadata"]["user_id"]
    chat = next(e for e in events if e["event_id"] == played.ops_chats[0])
    assert chat["type"] == chat["code"] == "chat"
    assert (chat["stream"], chat["room_id"], chat["user_id"]) == ("room:ops", "ops", "bob")
    assert chat["data"]["message"] == "before"
    assert {"connection_id", "transport", "authenticated"} <= set(chat["metadata"])


async def test_the_room_filter_gives_the_events_of_that_room(
    connect: Any, server: ServerThread
) -> None:
    played = await _play(connect)
    events = await _events(server, room_id="design")
    assert {(e["stream"], e["room_id"]) for e in events} == {("room:design", "design")}
    assert [e["event_id"] for e in events if e["code"] == "chat"] == played.design_chats
    assert [e["code"] for e in events if e["code"] != "chat"] == ["join"]
    assert await _events(server, room_id="nowhere") == []


async def test_the_user_filter_gives_what_the_user_sent_rejected_messages_included(
    connect: Any, server: ServerThread
) -> None:
    played = await _play(connect)
    events = await _events(server, user_id="bob")
    assert {e["user_id"] for e in events} == {"bob"}
    assert [e["code"] for e in events] == [
        "join",  # sending to a room joins it
        "chat",
        "INVALID_JSON",
        "UNSUPPORTED_MESSAGE_TYPE",
        "chat",
    ]
    assert [e["event_id"] for e in events if e["type"] == "chat"] == played.ops_chats


async def test_a_rejected_message_is_found_by_its_error_code(
    connect: Any, server: ServerThread
) -> None:
    await _play(connect)
    (invalid,) = await _events(server, code="INVALID_JSON")
    assert invalid["type"] == "rejected"
    assert invalid["code"] == invalid["data"]["error_code"] == "INVALID_JSON"
    assert (invalid["stream"], invalid["room_id"], invalid["user_id"]) == ("user:bob", None, "bob")
    assert invalid["data"]["frame"] == "this is { not json"
    assert invalid["data"]["message"]
    (unsupported,) = await _events(server, code="UNSUPPORTED_MESSAGE_TYPE", user_id="bob")
    assert json.loads(unsupported["data"]["frame"])["code"] == "dance"
    assert unsupported["event_id"] > invalid["event_id"]


async def test_the_code_filter_gives_messages_of_that_code_only(
    connect: Any, server: ServerThread
) -> None:
    played = await _play(connect)
    chats = await _events(server, code="chat")
    assert {(e["type"], e["code"]) for e in chats} == {("chat", "chat")}
    assert [e["event_id"] for e in chats] == sorted(played.design_chats + played.ops_chats)
    assert [e["room_id"] for e in await _events(server, code="join")] == ["design", "ops"]
    assert await _events(server, code="dance") == []  # refused: no event has that code


async def test_since_and_until_split_the_log_by_recorded_at(
    connect: Any, server: ServerThread
) -> None:
    await _play(connect)
    everything = await _events(server)
    moments = [datetime.fromisoformat(e["recorded_at"]) for e in everything]
    middle, last = moments[len(moments) // 2], moments[-1]

    def recorded(lowest: datetime | None, below: datetime | None) -> list[dict[str, Any]]:
        """The events with lowest <= recorded_at < below, as the whole log says."""
        return [
            event
            for event, at in zip(everything, moments, strict=True)
            if (lowest is None or at >= lowest) and (below is None or at < below)
        ]

    since = await _events(server, since=middle.isoformat())
    until = await _events(server, until=middle.isoformat())
    assert since == recorded(middle, None)
    assert until == recorded(None, middle)
    assert until + since == everything
    window = await _events(server, since=middle.isoformat(), until=last.isoformat())
    assert window == recorded(middle, last)

    # Any ISO 8601 offset names the same instant; with none, UTC is meant.
    plus_two = datetime.fromisoformat("2026-01-01T00:00+02:00").tzinfo
    assert await _events(server, since=middle.astimezone(plus_two).isoformat()) == since
    assert await _events(server, since=middle.replace(tzinfo=None).isoformat()) == since
    assert await _events(server, since=(last + timedelta(hours=1)).isoformat()) == []
    assert await _events(server, until=moments[0].isoformat()) == []


async def test_filters_combine(connect: Any, server: ServerThread) -> None:
    played = await _play(connect)
    events = await _events(server, room_id="ops", user_id="bob", code="chat")
    assert [e["event_id"] for e in events] == played.ops_chats
    assert await _events(server, room_id="design", user_id="bob") == []


# -- paging --------------------------------------------------------------------------------------


async def test_cursor_pages_have_no_overlap_and_no_gap(connect: Any, server: ServerThread) -> None:
    carol = await connect("/ws?user_id=carol")
    for n in range(23):
        await carol.chat("paged", f"m{n}")
    for _ in range(23):
        await carol.recv_code("chat_response")
    everything = await _events(server, room_id="paged")
    assert len(everything) == 24  # the join, then 23 chats

    seen: list[dict[str, Any]] = []
    after, pages = 0, 0
    while True:
        response = await _get(server, {"room_id": "paged", "limit": 5, "after": after})
        body = response.json()
        assert len(body["events"]) <= 5
        seen += body["events"]
        pages += 1
        if body["next_after"] is None:
            break
        assert body["next_after"] == body["events"][-1]["event_id"]
        after = body["next_after"]
    assert seen == everything
    assert pages == 5


async def test_next_after_is_null_when_the_page_holds_the_last_event(
    connect: Any, server: ServerThread
) -> None:
    await _play(connect)
    everything = await _events(server)
    exact = (await _get(server, {"limit": len(everything)})).json()
    assert exact == {"events": everything, "next_after": None}
    short = (await _get(server, {"limit": len(everything) - 1})).json()
    assert short["next_after"] == everything[-2]["event_id"]
    rest = (await _get(server, {"after": short["next_after"]})).json()
    assert rest == {"events": everything[-1:], "next_after": None}


async def test_the_module_pages_through_more_than_one_page(
    connect: Any, server: ServerThread
) -> None:
    await _play(connect)
    everything = await _events(server)
    connection = await connect_database(server.database.dsn)
    try:
        pages = [p async for p in audit.pages(connection, AuditFilter(), 100, page_size=3)]
        fewer = [p async for p in audit.pages(connection, AuditFilter(), 4, page_size=3)]
    finally:
        await connection.close()
    assert [e for p in pages for e in p.events] == everything
    assert [len(p.events) for p in pages[:-1]] == [3] * (len(pages) - 1)
    assert pages[-1].next_after is None
    assert [len(p.events) for p in fewer] == [3, 1]
    assert fewer[-1].next_after == everything[3]["event_id"]


# -- who may read it, and what it refuses -----------------------------------------------------


async def _status(server: ServerThread, headers: dict[str, str], query: str = "") -> int:
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get(f"/admin/events{query}")
    return response.status_code


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not.a.token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no token", "bad token", "not bearer"],
)
async def test_without_a_valid_token_it_is_401(
    server: ServerThread, headers: dict[str, str]
) -> None:
    assert await _status(server, headers) == 401
    assert await _status(server, headers, "?limit=0") == 401  # nothing is said before that


def _token(server: ServerThread, **claims: Any) -> dict[str, str]:
    secret = server.settings.jwt_secret
    assert secret is not None
    now = int(time.time())
    token = jwt.encode(
        {"sub": "someone", "iat": now, "exp": now + 600, **claims},
        secret.get_secret_value(),
        algorithm="HS256",
    )
    return {"Authorization": f"Bearer {token}"}


async def test_a_token_that_is_not_admin_is_403(server: ServerThread) -> None:
    user = {"Authorization": f"Bearer {mint(server.settings, 'reader')}"}
    assert await _status(server, user) == 403
    assert await _status(server, user, "?limit=0") == 403
    assert await _status(server, _token(server, role="user")) == 403
    assert await _status(server, _token(server, roles=["ops", "reader"])) == 403
    assert await _status(server, _token(server, roles="admin")) == 403  # a list, not a string


async def test_both_forms_of_the_admin_claim_are_admin(server: ServerThread) -> None:
    assert await _status(server, _admin_headers(server)) == 200  # "role": "admin" (token mint)
    assert await _status(server, _token(server, role="admin")) == 200
    assert await _status(server, _token(server, roles=["ops", "admin"])) == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after=-1", "after"),
        ("after=x", "after"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("room_id=no%20spaces", "room_id"),
        ("code=", "code"),
        ("room=typo", "room"),
        ("user_id=a%00b", "user_id"),  # text PostgreSQL cannot hold: no query, no 5xx
        ("code=chat%00", "code"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    server: ServerThread, query: str, field: str
) -> None:
    async with httpx.AsyncClient(base_url=server.http, headers=_admin_headers(server)) as http:
        response = await http.get(f"/admin/events?{query}")
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


async def test_since_after_until_is_422(server: ServerThread) -> None:
    query = "?since=2026-11-27T00:00:00Z&until=2026-11-26T00:00:00Z"
    async with httpx.AsyncClient(base_url=server.http, headers=_admin_headers(server)) as http:
        response = await http.get(f"/admin/events{query}")
    assert response.status_code == 422
    assert "since must be earlier than until" in response.text


# -- the command line ------------------------------------------------------------------------------


def _cli_environment(server: ServerThread, tmp_path: Path) -> dict[str, str]:
    return clean_environment(
        PRODUCTFLO_DATABASE_URL=server.database.dsn, PRODUCTFLO_DATA_DIR=str(tmp_path / "data")
    )


async def _audit(server: ServerThread, tmp_path: Path, *args: str) -> Any:
    env = _cli_environment(server, tmp_path)
    return await anyio.to_thread.run_sync(lambda: run(env, "audit", *args))


@pytest.mark.parametrize(
    ("options", "params"),
    [
        ((), {}),
        (("--user", "bob"), {"user_id": "bob"}),
        (("--room", "design"), {"room_id": "design"}),
        (("--code", "INVALID_JSON"), {"code": "INVALID_JSON"}),
        (("--room", "ops", "--code", "chat", "--limit", "1"), {"room_id": "ops", "code": "chat"}),
    ],
    ids=["everything", "user", "room", "error code", "room and code, limit 1"],
)
async def test_the_cli_prints_the_same_objects_as_the_api(
    connect: Any, server: ServerThread, tmp_path: Path, options: tuple[str, ...], params: Any
) -> None:
    await _play(connect)
    done = await _audit(server, tmp_path, "--format", "jsonl", *options)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    limit = dict(zip(options[::2], options[1::2], strict=True)).get("--limit")
    body = (await _get(server, params | ({"limit": limit} if limit else {}))).json()
    assert printed == body["events"]
    assert printed
    if body["next_after"] is not None:
        assert f"--after {body['next_after']}" in done.stderr


async def test_the_cli_time_window_matches_the_api(
    connect: Any, server: ServerThread, tmp_path: Path
) -> None:
    await _play(connect)
    everything = await _events(server)
    since, until = everything[2]["recorded_at"], everything[-1]["recorded_at"]
    done = await _audit(server, tmp_path, "--format", "jsonl", "--since", since, "--until", until)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert printed == await _events(server, since=since, until=until)
    assert printed


async def test_the_cli_table_has_a_header_and_a_line_per_event(
    connect: Any, server: ServerThread, tmp_path: Path
) -> None:
    await _play(connect)
    events = await _events(server, user_id="bob")
    done = await _audit(server, tmp_path, "--user", "bob")  # table is the default
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == [
        "EVENT_ID", "RECORDED_AT", "TYPE", "CODE", "ROOM", "USER", "SUMMARY"
    ]  # fmt: skip
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        cells = line.split()
        assert cells[0] == str(event["event_id"])
        assert cells[2:4] == [event["type"], event["code"]]
        assert cells[5] == "bob"
    rejected = lines[[e["code"] for e in events].index("INVALID_JSON")]
    assert "this is { not json" in rejected
    assert "after" in lines[-1]  # the chat's text


async def test_the_cli_refuses_bad_options_naming_them(
    server: ServerThread, tmp_path: Path
) -> None:
    done = await _audit(server, tmp_path, "--since", "yesterday", "--limit", "0")
    assert done.returncode == 2
    assert "--since" in done.stderr and "--limit" in done.stderr
    assert done.stdout == ""


async def test_a_documents_edit_history_says_who_changed_what_and_when(
    connect: Any, server: ServerThread, tmp_path: Path
) -> None:
    """The audit filtered by document: its opens and updates, each update with what it did to
    the text, by whom; the CLI's table says it in words."""
    alice = Editor(await connect("/ws?user_id=alice"), doc_id="spec", room="design")
    bob = Editor(await connect("/ws?user_id=bob"), doc_id="spec", room="design")
    elsewhere = Editor(alice.client, doc_id="other", room="design")
    await alice.open()
    await bob.open()
    await alice.type("hello world")
    await alice.take_updates(1)
    await bob.take_updates(1)
    await elsewhere.open()
    await elsewhere.type("not this one")
    await elsewhere.take_updates(1)
    await bob.type(" and bob", at=5)
    await alice.take_updates(1)
    alice.text.__delitem__(slice(0, 1))
    await alice.flush()
    await bob.take_updates(2)
    assert str(bob.text) == "ello and bob world"

    history = await _events(server, room_id="design", doc_id="spec")
    assert [(e["type"], e["user_id"]) for e in history] == [
        ("doc_open", "alice"),
        ("doc_open", "bob"),
        ("doc_update", "alice"),
        ("doc_update", "bob"),
        ("doc_update", "alice"),
    ]
    assert [e.get("change") for e in history[2:]] == [
        [{"insert": "hello world"}],
        [{"retain": 5}, {"insert": " and bob"}],
        [{"delete": 1}],
    ]
    # Paged from the middle: the document as it stood before the page is worked out.
    later = await _events(server, room_id="design", doc_id="spec", after=history[3]["event_id"])
    assert later[0]["change"] == [{"delete": 1}]

    done = await _audit(server, tmp_path, "--room", "design", "--doc", "spec")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[1:]
    assert len(lines) == 5
    assert 'spec: +" and bob" at 5' in lines[3] and "bob" in lines[3].split()
    assert "spec: -1 at 0" in lines[4]
