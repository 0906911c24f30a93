"""Bad input over the wire (SPEC section 6): deep nesting, numbers JSON cannot carry, text
PostgreSQL cannot store, positions past the log, a borrowed sender, validation messages. Each is
answered as the SPEC says, audited, and the connection keeps answering after it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio

from productflo.auth import mint
from productflo.events.models import MAX_POSITION
from productflo.jsontext import MAX_DEPTH, storable
from tests.client import Client
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
# What no answer may show a client: pydantic's words and model names, the id pattern, a URL.
INTERNALS = ("Input should", "pydantic", "Inbound", "A-Za-z", "{1,128}", "https://", "Traceback")


def error_of(message: dict[str, Any]) -> str:
    assert message["status"] == "error" and message["code"] == "system", message
    details = message["data"]["details"]
    for internal in INTERNALS:
        assert internal not in json.dumps(message), (internal, message)
    assert details["message"] == message["data"]["message"]
    code: str = details["error_code"]
    return code


async def answer_to(client: Client, frame: str | bytes) -> str:
    """Send `frame`; the error code of the answer, which must be the next envelope."""
    await client.send(frame)
    return error_of(await client.recv())


async def still_answers(client: Client, room: str = "r") -> int:
    """Chat once and get its acknowledgement: the connection is alive and every append it
    submitted before (rejections included) is committed. Returns the chat's event id."""
    text = f"still here {id(client)}"
    await client.chat(room, text)
    ack = await client.recv_until(
        lambda m: m["code"] == "chat_response" and m["data"].get("message") == text
    )
    event_id: int = ack["event_id"]
    return event_id


def nested(depth: int) -> str:
    """A chat frame `depth` levels deep (the envelope object is level 1, its data level 2)."""
    lists = depth - 2
    value = "[" * lists + "]" * lists
    return '{"code": "chat", "room_id": "r", "data": {"x": ' + value + "}}"


async def audit(server: ServerThread, **params: Any) -> list[dict[str, Any]]:
    token = mint(server.settings, "ops", admin=True)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/admin/events", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


# -- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 350, 1_200, 30_000])
async def test_a_frame_nested_too_deep_is_invalid_message_and_the_connection_answers_on(
    connect: Any, server: ServerThread, depth: int
) -> None:
    """350 deep once killed the connection with no close frame; 300 deep was stored and then
    broke every read of the room's history and of the audit."""
    alice = await connect("/ws?user_id=alice")
    assert await answer_to(alice, nested(depth)) == "INVALID_MESSAGE"
    await still_answers(alice)
    async with httpx.AsyncClient(base_url=server.http) as http:
        token = mint(server.settings, "alice")
        page = await http.get("/rooms/r/messages", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200, page.text
    assert [e["code"] for e in page.json()["events"]] == ["system", "chat_response"]
    rejected = await audit(server, code="INVALID_MESSAGE")
    assert [e["type"] for e in rejected] == ["rejected"]


async def test_nesting_to_the_limit_is_stored_and_read_back(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.send(nested(MAX_DEPTH))
    ack = await alice.recv_code("chat_response")
    depth, value = 2, ack["data"]["x"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    assert depth == MAX_DEPTH
    assert [e["code"] for e in await audit(server, code="chat")] == ["chat"]


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-" + "9" * 400])
async def test_numbers_json_cannot_carry_are_invalid_json(connect: Any, number: str) -> None:
    """Each once got FAILED_TO_PROCESS_MESSAGE and made its group-commit batch fail."""
    alice = await connect("/ws?user_id=alice")
    frame = '{"code": "chat", "room_id": "r", "data": {"score": ' + number + "}}"
    assert await answer_to(alice, frame) == "INVALID_JSON"
    await still_answers(alice)


# -- text PostgreSQL cannot store -----------------------------------------------------------------

# A lone surrogate cannot travel raw in a text frame (it has no UTF-8), so it is sent as its JSON
# escape; NUL both as its escape and raw.
UNSTORABLE = {
    "nul-escaped-in-data": '{"code": "chat", "room_id": "r", "data": {"message": "a\\u0000b"}}',
    "nul-raw-in-data": '{"code": "chat", "room_id": "r", "data": {"message": "a\x00b"}}',
    "nul-in-a-data-key": '{"code": "chat", "room_id": "r", "data": {"k\\u0000": 1}}',
    "surrogate-in-data": '{"code": "chat", "room_id": "r", "data": {"message": "\\ud800"}}',
    "surrogate-in-extra-data": '{"code": "chat", "room_id": "r", "data": {"m": ["\\udfff"]}}',
    "nul-escaped-in-code": '{"code": "chat\\u0000", "room_id": "r"}',
    "nul-raw-in-code": '{"code": "chat\x00", "room_id": "r"}',
    "surrogate-in-code": '{"code": "\\ud800", "room_id": "r"}',
}


@pytest.mark.parametrize("frame", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
async def test_text_postgresql_cannot_store_is_invalid_message_and_audited(
    connect: Any, server: ServerThread, frame: str
) -> None:
    """The code included: a code holding NUL was answered UNSUPPORTED_MESSAGE_TYPE, the NUL
    echoed, and its audit event was never written. What cannot be stored verbatim is stored
    escaped (for a raw NUL: the six characters \\u0000, visibly)."""
    alice = await connect("/ws?user_id=alice")
    assert await answer_to(alice, frame) == "INVALID_MESSAGE"
    await still_answers(alice)  # once acknowledged, the rejection before it is committed
    [rejected] = await audit(server, code="INVALID_MESSAGE")
    assert rejected["type"] == "rejected" and rejected["user_id"] == "alice"
    assert rejected["data"]["frame"] == storable(frame)
    assert [e["data"]["message"] for e in await audit(server, code="chat")] == [
        f"still here {id(alice)}"
    ], "nothing of the refused frame is stored as a chat"


@pytest.fixture
async def sio_client(server: ServerThread) -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        server.http,
        socketio_path="/ws",
        transports=["websocket"],
        headers={"User-ID": "sio-user"},
        wait_timeout=TIMEOUT,
    )
    yield client
    await client.disconnect()


async def test_a_raw_lone_surrogate_from_socketio_is_invalid_message_and_audited_escaped(
    sio_client: socketio.AsyncClient, server: ServerThread
) -> None:
    """A Socket.IO string payload is decoded by the client's JSON: the frame the server gets
    holds the lone surrogate itself. It is refused, and audited with the surrogate escaped."""
    frame = '{"code": "chat", "room_id": "r", "data": {"message": "\ud800"}}'
    answer = await sio_client.call("message", frame, timeout=TIMEOUT)
    assert error_of(answer) == "INVALID_MESSAGE"
    chat = {"code": "chat", "room_id": "r", "data": {"message": "after"}}
    ack = await sio_client.call("message", chat, timeout=TIMEOUT)
    assert ack["code"] == "chat_response", ack
    [rejected] = await audit(server, code="INVALID_MESSAGE")
    assert rejected["data"]["frame"] == storable(frame)
    assert "\\ud800" in rejected["data"]["frame"]


async def test_a_frame_nested_too_deep_over_socketio_is_invalid_message(
    sio_client: socketio.AsyncClient,
) -> None:
    value: Any = "bottom"
    for _ in range(350):
        value = [value]
    deep = {"code": "chat", "room_id": "r", "data": {"x": value}}
    answer = await sio_client.call("message", deep, timeout=TIMEOUT)
    assert error_of(answer) == "INVALID_MESSAGE"
    chat = {"code": "chat", "room_id": "r", "data": {"message": "after"}}
    ack = await sio_client.call("message", chat, timeout=TIMEOUT)
    assert ack["code"] == "chat_response", ack


# -- positions, identity, validation messages -----------------------------------------------------


async def test_history_before_past_the_log_is_invalid_message(connect: Any) -> None:
    """10**30 was FAILED_TO_PROCESS_MESSAGE, as if the database were down."""
    alice = await connect("/ws?user_id=alice")
    await still_answers(alice)
    past = {"code": "history", "room_id": "r", "data": {"before": 10**30}}
    assert await answer_to(alice, json.dumps(past)) == "INVALID_MESSAGE"
    await alice.send({**past, "data": {"before": MAX_POSITION}})
    page = await alice.recv_code("history")
    assert [e["code"] for e in page["data"]["events"]] == ["system", "chat_response"]


async def test_nobody_can_pose_as_the_assistant_or_another_user(
    connect: Any, server: ServerThread
) -> None:
    mallory = await connect("/ws?user_id=mallory")
    for sender in ("haitch", "alice", ""):
        frame = {"code": "chat", "room_id": "r", "data": {"message": "hi", "sender": sender}}
        assert await answer_to(mallory, json.dumps(frame)) == "USER_ID_MISMATCH"
    await still_answers(mallory)  # its own name as sender, as the seed's clients send
    chats = await audit(server, code="chat")
    assert [e["data"]["sender"] for e in chats] == ["mallory"]


VALIDATION = {
    '{"code": "chat", "room_id": "not a room!"}': (
        "room_id must be 1-128 characters of letters, digits and _.@:+|=~-"
    ),
    '{"code": "chat", "room_id": "r", "data": "hello"}': "data must be an object",
    '{"code": "history", "room_id": "r", "data": {"limit": 1000}}': (
        "data.limit must be an integer from 1 to 100"
    ),
    '{"code": "chat", "room_id": "r", "data": {"message": {"secret": "input"}}}': (
        "data.message must be a string of at most 32768 characters"
    ),
}


async def test_validation_errors_show_no_internals(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    for frame, told in VALIDATION.items():
        await alice.send(frame)
        answer = await alice.recv()
        assert error_of(answer) == "INVALID_MESSAGE"
        assert answer["data"]["message"] == told
        assert "secret" not in json.dumps(answer)


async def test_http_validation_errors_are_422_without_internals(server: ServerThread) -> None:
    token = mint(server.settings, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        limit = await http.get("/rooms/x/messages", params={"limit": "abc"})
        before = await http.get("/rooms/x/messages", params={"before": str(10**30)})
        room = await http.get("/rooms/not%20a%20room!/messages")
    for response in (limit, before, room):
        assert response.status_code == 422, response.text
        for internal in (*INTERNALS, "abc", str(10**30), "not a room", '"input"', '"ctx"'):
            assert internal not in response.text, (internal, response.text)
        for item in response.json()["detail"]:
            assert set(item) == {"loc", "msg", "type"}, item
    assert limit.json()["detail"][0]["loc"] == ["query", "limit"]
    assert limit.json()["detail"][0]["msg"] == "limit must be an integer"
    assert before.json()["detail"][0]["msg"] == f"before must be at most {MAX_POSITION}"
    assert room.json()["detail"][0]["msg"] == (
        "room_id must be 1-128 characters of letters, digits and _.@:+|=~-"
    )


async def test_http_validation_errors_never_quote_the_input(server: ServerThread) -> None:
    """A validator's own words are kept (since after until), unless they quote the input."""
    admin = {"Authorization": f"Bearer {mint(server.settings, 'ops', admin=True)}"}
    async with httpx.AsyncClient(base_url=server.http, headers=admin) as http:
        quoted = await http.get("/admin/events", params={"since": "<script>x</script>"})
        crossed = await http.get(
            "/admin/events",
            params={"since": "2026-11-27T00:00:00Z", "until": "2026-11-26T00:00:00Z"},
        )
    assert quoted.status_code == crossed.status_code == 422
    assert "script" not in quoted.text
    assert quoted.json()["detail"] == [
        {
            "loc": ["query", "since"],
            "msg": "since must be an ISO 8601 date and time (e.g. 2026-11-26T12:00:00Z)",
            "type": "value_error",
        }
    ]
    assert [d["msg"] for d in crossed.json()["detail"]] == ["since must be earlier than until"]
