"""The anonymous endpoint /ws, driven by a real WebSocket client against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from productflo.envelopes import WELCOME_MESSAGE
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio


async def _events(server: ServerThread) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(server.database.dsn)
    try:
        return list(await connection.fetch("SELECT * FROM events ORDER BY position"))
    finally:
        await connection.close()


def error_code(message: dict[str, Any]) -> str:
    assert message["status"] == "error", message
    assert message["code"] == "system"
    code: str = message["data"]["details"]["error_code"]
    return code


# -- identity and welcome -------------------------------------------------------------------------


async def test_welcome_is_the_seed_shape_with_the_connections_user(connect: Any) -> None:
    client = await connect("/ws?user_id=user-123")
    welcome = client.welcome
    assert welcome["status"] == "success"
    assert welcome["code"] == "system"
    assert welcome["user_id"] == "user-123"
    assert welcome["data"]["message"] == WELCOME_MESSAGE
    assert welcome["data"]["details"]["user_id"] == "user-123"
    assert welcome["data"]["details"]["timestamp"].endswith("Z")


async def test_identity_precedence_is_query_then_header_then_cookie(connect: Any) -> None:
    both = {"User-ID": "from-header", "Cookie": "user_id=from-cookie"}
    assert (await connect("/ws?user_id=from-query", additional_headers=both)).user_id == (
        "from-query"
    )
    assert (await connect("/ws", additional_headers=both)).user_id == "from-header"
    cookie_only = {"Cookie": "user_id=from-cookie"}
    assert (await connect("/ws", additional_headers=cookie_only)).user_id == "from-cookie"


async def test_a_generated_id_is_set_as_cookie_when_none_was_sent(connect: Any) -> None:
    client = await connect("/ws")
    cookie = client.connection.response.headers["set-cookie"]
    assert cookie.startswith(f"user_id={client.user_id};")
    for attribute in ("Path=/", "HttpOnly", "SameSite=Lax"):
        assert attribute in cookie
    again = await connect("/ws", additional_headers={"Cookie": f"user_id={client.user_id}"})
    assert again.user_id == client.user_id
    assert "set-cookie" not in again.connection.response.headers


async def test_an_invalid_user_id_is_refused_with_1008(connect: Any) -> None:
    client = await connect("/ws?user_id=a%20b%3Bc", expect_welcome=False)
    assert error_code(await client.recv()) == "INVALID_MESSAGE"
    assert await client.closed_with() == 1008


@pytest.mark.parametrize("name", ["haitch", "Haitch"])
async def test_nobody_may_call_themselves_haitch_without_a_token(connect: Any, name: str) -> None:
    """Answers come from user_id "haitch": an anonymous client may not pose as the assistant."""
    client = await connect(f"/ws?user_id={name}", expect_welcome=False)
    refusal = await client.recv()
    assert error_code(refusal) == "INVALID_MESSAGE"
    assert "reserved" in refusal["data"]["message"]
    assert await client.closed_with() == 1008


# -- chat ---------------------------------------------------------------------------------------


async def test_chat_reaches_every_member_and_the_senders_copy_is_its_ack(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    carol = await connect("/ws?user_id=carol")  # not in the room
    await bob.join("design")
    await alice.chat("design", "Has anyone reviewed the latest design update?")

    ack = await alice.recv_code("chat_response")
    seen = await bob.recv_code("chat_response")
    assert ack == seen
    assert ack["status"] == "success"
    assert ack["user_id"] == "alice"
    assert ack["room_id"] == "design"
    assert ack["data"] == {
        "message": "Has anyone reviewed the latest design update?",
        "sender": "alice",
    }
    assert isinstance(ack["event_id"], int) and ack["event_id"] > 0
    assert await carol.nothing_within(0.5)


async def test_event_ids_grow_in_the_order_a_client_sent(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    for n in range(20):
        await alice.chat("r", f"m{n}")
    acks = [await alice.recv_code("chat_response") for _ in range(20)]
    assert [a["data"]["message"] for a in acks] == [f"m{n}" for n in range(20)]
    ids = [a["event_id"] for a in acks]
    assert ids == sorted(ids) and len(set(ids)) == 20


async def test_client_msg_id_is_echoed_and_a_resend_is_not_stored_twice(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await bob.join("r")
    await alice.chat("r", "once", client_msg_id="msg-1")
    first = await alice.recv_code("chat_response")
    assert first["client_msg_id"] == "msg-1"
    await bob.recv_code("chat_response")

    await alice.chat("r", "once", client_msg_id="msg-1")
    again = await alice.recv_code("chat_response")
    assert again["event_id"] == first["event_id"]
    assert again["client_msg_id"] == "msg-1"
    assert await bob.nothing_within(0.5), "a resend must not be delivered again"
    chats = [e for e in await _events(server) if e["type"] == "chat"]
    assert len(chats) == 1


async def test_a_resend_after_leaving_does_not_join_the_room_again(
    connect: Any, server: ServerThread
) -> None:
    """The first send joined alice to the room implicitly; resending it once she has left is
    answered with the original and stores nothing, not even a join she never asked for."""
    alice = await connect("/ws?user_id=alice")
    await alice.chat("r", "before leaving", client_msg_id="msg-1")
    first = await alice.recv_code("chat_response")
    await alice.send({"code": "leave", "room_id": "r"})
    await alice.recv_until(lambda m: m["data"].get("details", {}).get("action") == "leave")
    stored = len(await _events(server))

    await alice.chat("r", "before leaving", client_msg_id="msg-1")
    again = await alice.recv_code("chat_response")
    assert again["event_id"] == first["event_id"]
    assert len(await _events(server)) == stored, "the resend appended something (a join)"


async def test_the_same_client_msg_id_from_another_user_is_another_message(
    connect: Any,
) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await alice.chat("r", "from alice", client_msg_id="x")
    await bob.chat("r", "from bob", client_msg_id="x")
    a = await alice.recv_code("chat_response")
    b = await bob.recv_until(lambda m: m.get("user_id") == "bob" and m["code"] == "chat_response")
    assert a["event_id"] != b["event_id"]


# -- membership ---------------------------------------------------------------------------------


async def test_membership_is_restored_when_the_user_reconnects(connect: Any) -> None:
    bob = await connect("/ws?user_id=bob")
    await bob.send({"code": "join", "room_id": "kept"})
    await bob.send({"code": "join", "room_id": "left"})
    await bob.send({"code": "leave", "room_id": "left"})
    left = await bob.recv_until(lambda m: m["data"].get("details", {}).get("action") == "leave")
    assert left["room_id"] == "left"
    await bob.close()

    bob = await connect("/ws?user_id=bob")
    assert bob.welcome["data"]["details"]["rooms"] == ["kept"]
    alice = await connect("/ws?user_id=alice")
    await alice.chat("kept", "still here?")
    await alice.chat("left", "gone?")
    message = await bob.recv_code("chat_response")
    assert message["data"]["message"] == "still here?"
    assert await bob.nothing_within(0.5)


async def test_sending_to_a_room_joins_it(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await bob.chat("new-room", "first")
    joined = await bob.recv_code("system")
    assert joined["data"]["details"] == {"action": "join", "user_id": "bob", "room_id": "new-room"}
    await bob.recv_code("chat_response")
    await alice.chat("new-room", "hello bob")
    reply = await bob.recv_code("chat_response")
    assert reply["user_id"] == "alice"


async def test_compression_offered_by_a_client_is_declined(connect: Any) -> None:
    """Each recipient's frame is the same bytes, built once: nothing is compressed per client."""
    alice = await connect("/ws?user_id=alice", compression="deflate")
    assert alice.connection.response is not None
    assert "Sec-WebSocket-Extensions" not in alice.connection.response.headers
    await alice.chat("r", "plain")
    assert (await alice.recv_code("chat_response"))["data"]["message"] == "plain"


async def test_with_compression_configured_a_client_that_offers_it_gets_it_bounded(
    start_server: Any, connect_to: Any, frame_writes: list[int]
) -> None:
    """PRODUCTFLO_WS_COMPRESSION=1: permessage-deflate with 4 KiB windows for a client that offers
    it, whose envelopes then go through websockets (compressed), never the uncompressed frames
    path; a client that does not offer it still gets the frames path."""
    framed = frame_writes
    server = start_server(ws_compression=True)
    alice = await connect_to(server, "/ws?user_id=alice", compression="deflate")
    assert alice.connection.response is not None
    offer = alice.connection.response.headers["Sec-WebSocket-Extensions"]
    assert "permessage-deflate" in offer and "server_max_window_bits=12" in offer
    await alice.chat("r", "squeeze " * 500)
    assert (await alice.recv_code("chat_response"))["data"]["message"] == "squeeze " * 500
    assert framed == [], "a compressed connection's envelopes never take the frames path"

    bob = await connect_to(server, "/ws?user_id=bob", compression=None)
    assert bob.connection.response is not None
    assert "Sec-WebSocket-Extensions" not in bob.connection.response.headers
    await bob.chat("r", "plain")
    assert (await bob.recv_code("chat_response"))["data"]["message"] == "plain"
    assert (await alice.recv_code("chat_response"))["data"]["message"] == "plain"
    assert framed, "the uncompressed connection's envelopes went out as frames"


async def test_under_the_servers_own_protocol_envelopes_go_out_as_frames_many_per_write(
    start_server: Any, connect_to: Any, frame_writes: list[int]
) -> None:
    """The fast path (transports/wire.py) is the one taken: each write carries whole frames,
    several when several envelopes were queued, and the client reads each as one message."""
    writes = frame_writes
    server = start_server()
    alice = await connect_to(server, "/ws?user_id=alice")
    await alice.join("r")
    for n in range(50):
        await alice.send({"code": "chat", "room_id": "r", "data": {"message": f"m{n}"}})
    texts = [(await alice.recv_code("chat_response"))["data"]["message"] for _ in range(50)]
    assert texts == [f"m{n}" for n in range(50)]
    assert sum(writes) >= 52, "welcome, join and the chats all went through write_frames"
    assert max(writes) > 1, "envelopes queued together left in one write"


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
async def test_under_another_websocket_protocol_envelopes_go_out_through_plain_asgi(
    start_server: Any, connect_to: Any, ws: str
) -> None:
    """Without the server's frames extension (transports/wire.py), each envelope is one ASGI
    `websocket.send`: the same conversation, in the same order."""
    server = start_server(ws=ws)
    alice = await connect_to(server, "/ws?user_id=alice")
    bob = await connect_to(server, "/ws?user_id=bob")
    await bob.join("r")
    for n in range(5):
        await alice.chat("r", f"m{n}")
    texts = [(await bob.recv_code("chat_response"))["data"]["message"] for _ in range(5)]
    assert texts == [f"m{n}" for n in range(5)]


async def test_after_leave_a_user_receives_nothing_from_the_room(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await bob.send({"code": "join", "room_id": "r"})
    await bob.send({"code": "leave", "room_id": "r"})
    await bob.recv_until(lambda m: m["data"].get("details", {}).get("action") == "leave")
    await alice.chat("r", "anyone?")
    await alice.recv_code("chat_response")
    assert await bob.nothing_within(0.5)


async def test_leaving_a_room_one_is_not_in_is_acknowledged_to_the_sender_alone(
    connect: Any,
) -> None:
    """Every message is answered: the stored leave comes back to the connection that sent it,
    though nobody is a member it would be delivered to."""
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    phone = await connect("/ws?user_id=bob")
    laptop = await connect("/ws?user_id=bob")
    await phone.send({"code": "leave", "room_id": "r", "client_msg_id": "bye"})
    ack = await phone.recv()
    assert ack["client_msg_id"] == "bye" and "event_id" in ack
    assert ack["data"]["details"] == {"action": "leave", "user_id": "bob", "room_id": "r"}
    await alice.chat("r", "after")
    await alice.recv_code("chat_response")
    await phone.send({"code": "history", "room_id": "r"})  # answered after anything before it
    assert (await phone.recv())["code"] == "history"
    assert await laptop.nothing_within(0.2), "an answer, not a room event"


async def test_membership_is_shared_by_a_users_connections(connect: Any) -> None:
    phone = await connect("/ws?user_id=bob")
    laptop = await connect("/ws?user_id=bob")
    alice = await connect("/ws?user_id=alice")
    await phone.send({"code": "join", "room_id": "r"})
    await laptop.recv_code("system")  # the join, seen on the other device too
    await alice.chat("r", "both devices")
    assert (await phone.recv_code("chat_response"))["data"]["message"] == "both devices"
    assert (await laptop.recv_code("chat_response"))["data"]["message"] == "both devices"


# -- typing -------------------------------------------------------------------------------------


async def test_typing_reaches_the_other_members_and_is_not_stored(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await bob.join("r")  # acknowledged before Alice joins, so Bob sees her join
    await alice.join("r")
    await bob.recv_until(lambda m: m["user_id"] == "alice")
    stored = len(await _events(server))

    await alice.send({"code": "typing", "room_id": "r", "data": {"is_typing": True}})
    typing = await bob.recv_code("typing")
    assert typing["user_id"] == "alice"
    assert typing["room_id"] == "r"
    assert typing["data"] == {"is_typing": True}
    assert "event_id" not in typing
    assert await alice.nothing_within(0.3), "the typist does not get their own typing"
    assert len(await _events(server)) == stored


# -- errors -------------------------------------------------------------------------------------

ERROR_CASES = [
    ("not json", "INVALID_JSON"),
    ("[1, 2]", "INVALID_JSON"),
    ('"a string"', "INVALID_JSON"),
    ('{"room_id": "r", "data": {}}', "MESSAGE_CODE_REQUIRED"),
    ('{"code": "dance", "room_id": "r"}', "UNSUPPORTED_MESSAGE_TYPE"),
    ('{"code": "chat_response", "room_id": "r"}', "UNSUPPORTED_MESSAGE_TYPE"),
    ('{"code": "notification", "room_id": "r"}', "UNSUPPORTED_MESSAGE_TYPE"),
    ('{"code": "chat", "data": {"message": "x"}}', "ROOM_ID_REQUIRED"),
    ('{"code": "join"}', "ROOM_ID_REQUIRED"),
    ('{"code": "chat", "room_id": "r", "data": "text"}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": "r", "data": {"message": 5}}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": 7, "data": {}}', "INVALID_MESSAGE"),
    ('{"code": 3, "room_id": "r"}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": "r", "client_msg_id": ""}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": "r", "client_msg_id": "' + "x" * 65 + '"}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": "r", "timestamp": "yesterday"}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": "r", "data": {"message": "a\\u0000b"}}', "INVALID_MESSAGE"),
    ('{"code": "history", "room_id": "r", "data": {"limit": 101}}', "INVALID_MESSAGE"),
    ('{"code": "chat", "room_id": "r", "user_id": "mallory"}', "USER_ID_MISMATCH"),
]


@pytest.mark.parametrize(("frame", "expected"), ERROR_CASES)
async def test_bad_messages_get_their_error_code_and_the_connection_stays_open(
    connect: Any, server: ServerThread, frame: str, expected: str
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.send(frame)
    error = await alice.recv()
    assert error_code(error) == expected
    assert error["user_id"] == "alice"
    assert error["data"]["details"]["message"] == error["data"]["message"]
    # still open and working
    await alice.chat("r", "still here")
    assert (await alice.recv_code("chat_response"))["data"]["message"] == "still here"
    rejected = [e for e in await _events(server) if e["type"] == "rejected"]
    assert [json.loads(e["data"])["error_code"] for e in rejected] == [expected]
    assert [e["type"] for e in await _events(server) if e["type"] not in ("rejected", "join")] == [
        "chat"
    ]


async def test_an_error_answer_carries_the_client_msg_id(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.send({"code": "chat", "client_msg_id": "c-9", "data": {}})
    error = await alice.recv()
    assert error_code(error) == "ROOM_ID_REQUIRED"
    assert error["client_msg_id"] == "c-9"


async def test_rejected_messages_are_never_delivered_to_anyone(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await bob.join("r")
    await alice.send({"code": "chat", "room_id": "r", "user_id": "bob", "data": {"message": "x"}})
    assert error_code(await alice.recv()) == "USER_ID_MISMATCH"
    assert await bob.nothing_within(0.5)


async def test_a_frame_over_the_size_limit_closes_1009(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.send(json.dumps({"code": "chat", "room_id": "r", "data": {"message": "x" * 70000}}))
    assert await alice.closed_with() == 1009


# A low rate, so that tokens refilled while a loaded machine is slow to read a burst cannot admit
# all of what is over it: 40 over a burst of 10 come back at 5/s only after 8 s (and stay under the
# 50 refusals that would be abuse).
SLOW_RATE = 5
OVER_THE_BURST = 40


async def test_over_the_rate_limit_is_refused_and_not_stored(
    start_server: Any, connect_to: Any
) -> None:
    server = start_server(rate_limit=SLOW_RATE)
    alice = await connect_to(server, "/ws?user_id=alice")
    sent = int(2 * server.settings.rate_limit) + OVER_THE_BURST
    for n in range(sent):
        await alice.chat("r", f"m{n}")
    answers = [
        await alice.recv_until(lambda m: m["code"] != "system" or m["status"] == "error")
        for _ in range(sent)
    ]
    limited = [a for a in answers if a["status"] == "error"]
    assert limited and all(error_code(a) == "RATE_LIMITED" for a in limited)
    chats = [e for e in await _events(server) if e["type"] == "chat"]
    assert len(chats) == len(answers) - len(limited)
    assert not [e for e in await _events(server) if e["type"] == "rejected"]


async def test_persistent_flooding_closes_1008(connect: Any, server: ServerThread) -> None:
    alice = await connect("/ws?user_id=alice")
    flood = json.dumps({"code": "typing", "room_id": "r", "data": {"is_typing": True}})
    rate = server.settings.rate_limit
    # At least the burst plus the refusal allowance; more if a loaded machine refills them.
    with contextlib.suppress(ConnectionClosed):
        for _ in range(int(100 * rate)):
            await alice.send(flood)
    assert await alice.closed_with() == 1008


# -- the database going away ----------------------------------------------------------------------


async def _cut_database(server: ServerThread, allow: bool) -> None:
    parts = urlsplit(server.database.dsn)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
        if not allow:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await admin.close()


async def test_with_the_database_down_nothing_is_acknowledged_or_delivered(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await bob.join("r")
    await alice.chat("r", "before")
    await alice.recv_code("chat_response")
    await bob.recv_code("chat_response")

    await _cut_database(server, allow=False)
    try:
        await alice.chat("r", "during", client_msg_id="during-1")
        error = await alice.recv_code("system", timeout=30)
        assert error_code(error) == "FAILED_TO_PROCESS_MESSAGE"
        assert error["client_msg_id"] == "during-1"
        assert "asyncpg" not in json.dumps(error) and "postgres" not in json.dumps(error).lower()
        assert await bob.nothing_within(1.0)
        async with httpx.AsyncClient(base_url=server.http) as http:
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await _cut_database(server, allow=True)

    # It recovers by itself; the resend is stored once.
    async with asyncio.timeout(30):
        while True:
            await alice.chat("r", "during", client_msg_id="during-1")
            answer = await alice.recv()
            if answer["code"] == "chat_response":
                break
            assert error_code(answer) == "FAILED_TO_PROCESS_MESSAGE"
            await asyncio.sleep(0.2)
    assert (await bob.recv_code("chat_response"))["data"]["message"] == "during"
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/readyz")).status_code == 200
    chats = [e for e in await _events(server) if e["type"] == "chat"]
    assert [json.loads(e["data"])["message"] for e in chats] == ["before", "during"]


async def test_a_chat_sent_right_after_leave_rejoins_and_is_acknowledged(connect: Any) -> None:
    """The chat is judged against the leave still in flight, not the hub's older membership."""
    bob = await connect("/ws?user_id=bob")
    await bob.join("r")
    await bob.send({"code": "leave", "room_id": "r"})
    await bob.chat("r", "back again")
    ack = await bob.recv_code("chat_response")
    assert ack["data"]["message"] == "back again"
    bob2 = await connect("/ws?user_id=bob")
    assert bob2.welcome["data"]["details"]["rooms"] == ["r"]
