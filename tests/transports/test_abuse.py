"""Abuse and expiry (SPEC section 6): a flooding client hears RATE_LIMITED, every message it had
sent before is acknowledged, then it is closed 1008; a connection whose token expires is told so
and closed 4401, and nothing it sends after that is taken."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import socketio
from websockets.exceptions import ConnectionClosed

from tests.client import Client
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio

FLOOD = 2000
TIMEOUT = 30.0
REJECTED = 'productflo_messages_rejected_total{error_code="RATE_LIMITED"}'


async def _metric(server: ServerThread, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.http) as http:
        response = await http.get("/metrics")
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _stored_chats(server: ServerThread, user: str) -> set[int]:
    connection = await asyncpg.connect(server.database.dsn)
    try:
        rows = await connection.fetch(
            "SELECT position FROM events WHERE type = 'chat' AND metadata->>'user_id' = $1", user
        )
    finally:
        await connection.close()
    return {row["position"] for row in rows}


async def _read_until_closed(client: Client) -> tuple[list[dict[str, Any]], int | None]:
    received: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                received.append(json.loads(await client.connection.recv()))
    except ConnectionClosed as closed:
        return received, closed.rcvd.code if closed.rcvd else None


def _error_code(message: dict[str, Any]) -> str | None:
    if message["status"] != "error":
        return None
    code: str = message["data"]["details"]["error_code"]
    return code


async def test_a_flood_hears_rate_limited_last_and_every_stored_message_is_acknowledged(
    connect: Any, server: ServerThread
) -> None:
    """2,000 chats at once: the burst is stored and acknowledged, the rest refused one by one
    with RATE_LIMITED (each counted once), and the close 1008 comes after all of them."""
    counted_before = await _metric(server, REJECTED)
    alice = await connect("/ws?user_id=alice")
    reader = asyncio.create_task(_read_until_closed(alice))
    try:
        for n in range(FLOOD):
            await alice.chat("r", f"m{n}", client_msg_id=f"c{n}")
    except ConnectionClosed:
        pass  # closed mid-flood, as it should be
    received, code = await reader

    assert code == 1008
    limited = [m for m in received if _error_code(m) == "RATE_LIMITED"]
    assert limited, "the client was never told why"
    assert received[-1] is limited[-1], "RATE_LIMITED is the last envelope before the close"
    acks = {m["event_id"] for m in received if m["code"] == "chat_response"}
    stored = await _stored_chats(server, "alice")
    assert stored, "the burst was stored"
    assert acks == stored, "every stored message was acknowledged, none dropped with the close"
    assert await _metric(server, REJECTED) - counted_before == len(limited)


async def test_every_refused_frame_names_its_client_msg_id(
    start_server: Any, connect_to: Any
) -> None:
    # At 5/s, the 40 over the burst of 10 are not all admitted by tokens refilled while a loaded
    # machine reads them (that takes 8 s), and stay under the 50 refusals that would be abuse.
    server = start_server(rate_limit=5)
    alice = await connect_to(server, "/ws?user_id=alice")
    sent = int(2 * server.settings.rate_limit) + 40
    for n in range(sent):
        await alice.chat("r", f"m{n}", client_msg_id=f"c{n}")
    answers = [
        await alice.recv_until(lambda m: m["code"] == "chat_response" or m["status"] == "error")
        for _ in range(sent)
    ]
    refused = [m["client_msg_id"] for m in answers if _error_code(m) == "RATE_LIMITED"]
    acked = [m["client_msg_id"] for m in answers if m["code"] == "chat_response"]
    assert refused
    assert sorted(refused + acked, key=lambda c: int(c[1:])) == [f"c{n}" for n in range(sent)]


# Long enough for a loaded machine to connect and commit a first message before it expires.
LIFETIME = 3.0


def _token(server: ServerThread, user: str, lifetime: float) -> str:
    """A token that expires `lifetime` seconds from now or up to a second later (`exp` is whole
    seconds: rounded down, a lifetime of 2 s left as little as 1 s)."""
    secret = server.settings.jwt_secret
    assert secret is not None
    claims = {"sub": user, "exp": math.ceil(time.time() + lifetime)}
    return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")


async def test_a_connection_is_closed_4401_when_its_token_expires(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect(f"/ws/secure?access_token={_token(server, 'alice', LIFETIME)}")
    await alice.chat("r", "before")
    ack = await alice.recv_code("chat_response")
    assert ack["data"]["message"] == "before"

    told = await alice.recv_until(lambda m: m["status"] == "error", timeout=TIMEOUT)
    assert _error_code(told) == "AUTHENTICATION_FAILED"
    assert told["data"]["details"]["message"] == "The token has expired"
    with pytest.raises(ConnectionClosed):
        await alice.chat("r", "after")  # the close may already be on the wire
        await alice.recv(timeout=TIMEOUT)
    assert alice.connection.close_code == 4401
    assert await _stored_chats(server, "alice") == {ack["event_id"]}


class _SioReader:
    """A python-socketio client that keeps every `message` envelope until it is disconnected.

    The client runs each message's handler in a task of its own, so its disconnect handler can
    run before the handlers of the last messages: `wait_gone` waits for the disconnect and for
    the envelope that says why (by then every earlier one has been kept too, in order)."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self._told = asyncio.Event()
        self.sio.on("message", self._on_message)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_message(self, payload: dict[str, Any]) -> None:
        self.received.append(payload["data"])
        if "close_code" in (payload["data"]["data"].get("details") or {}):
            self._told.set()

    async def _on_disconnect(self, *_: Any) -> None:
        self.gone.set()

    async def wait_gone(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.gone.wait()
            await self._told.wait()

    async def open(self, server: ServerThread, **options: Any) -> None:
        await self.sio.connect(
            server.http, socketio_path="/ws", transports=["websocket"], wait_timeout=10, **options
        )

    @property
    def closing(self) -> dict[str, Any]:
        """The last envelope, which says why the server closed the connection."""
        last = self.received[-1]
        assert last["code"] == "system" and "close_code" in last["data"]["details"], last
        return last


async def test_a_socketio_flood_hears_rate_limited_then_the_close_with_every_ack(
    start_server: Any,
) -> None:
    # Socket.IO's own ping deadlines (the tests' usual 1 s + 2 s) out of the way: on a machine
    # whose cores are all busy, 2,000 frames can hold up a pong long enough for the server to
    # drop the connection for a ping timeout before it could tell the client why it closes.
    server = start_server(socketio_ping_interval=25.0, socketio_ping_timeout=20.0)
    client = _SioReader()
    await client.open(server, headers={"User-ID": "alice"})
    try:
        for n in range(FLOOD):
            if client.gone.is_set():
                break
            frame = {"code": "chat", "room_id": "r", "client_msg_id": f"c{n}", "data": {}}
            await client.sio.emit("message", frame)
        await client.wait_gone(TIMEOUT)
    finally:
        await client.sio.disconnect()

    assert client.closing["data"]["details"]["close_code"] == 1008
    limited = [m for m in client.received if _error_code(m) == "RATE_LIMITED"]
    assert limited and client.received[-2] is limited[-1], "RATE_LIMITED, then the close"
    acks = {m["event_id"] for m in client.received if m["code"] == "chat_response"}
    assert acks == await _stored_chats(server, "alice") != set()


async def test_a_socketio_connection_is_closed_4401_when_its_token_expires(
    server: ServerThread,
) -> None:
    client = _SioReader()
    await client.open(server, auth={"token": _token(server, "alice", LIFETIME)})
    try:
        await client.wait_gone(TIMEOUT)
    finally:
        await client.sio.disconnect()
    told = client.received[-2]
    assert _error_code(told) == "AUTHENTICATION_FAILED", told
    assert told["data"]["details"]["message"] == "The token has expired"
    assert client.closing["data"]["details"]["close_code"] == 4401
