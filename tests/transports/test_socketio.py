"""Socket.IO at /ws (requests carrying EIO=), driven by python-socketio's AsyncClient."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio

from productflo.auth import mint
from productflo.envelopes import WELCOME_MESSAGE
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


class SioClient:
    """An AsyncClient whose `message` events (payload.data, the envelope) land in a queue."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sio.on("message", self._on_message)

    async def _on_message(self, payload: dict[str, Any]) -> None:
        await self.messages.put(payload["data"])

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def recv_until(self, predicate: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                if predicate(message):
                    return message

    async def recv_code_chat(self) -> dict[str, Any]:
        return await self.recv_until(lambda m: m["code"] == "chat_response")

    async def emit(self, data: Any) -> None:
        await self.sio.emit("message", data)

    async def call(self, data: Any) -> Any:
        """Emit with a callback; what the server acknowledged it with."""
        return await self.sio.call("message", data, timeout=TIMEOUT)


@pytest.fixture
async def sio_connect(server: ServerThread) -> AsyncIterator[Any]:
    clients: list[SioClient] = []

    async def open_client(
        transport: str = "websocket",
        *,
        auth: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> SioClient:
        client = SioClient()
        clients.append(client)
        await client.sio.connect(
            server.http,
            socketio_path="/ws",
            transports=[transport],
            auth=auth,
            headers=headers or {},
            wait_timeout=TIMEOUT,
        )
        return client

    yield open_client
    for client in clients:
        await client.sio.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_welcome_arrives_as_payload_data(sio_connect: Any, transport: str) -> None:
    client = await sio_connect(transport, headers={"User-ID": "sio-user"})
    welcome = await client.recv()
    assert welcome["status"] == "success"
    assert welcome["code"] == "system"
    assert welcome["data"]["message"] == WELCOME_MESSAGE
    assert welcome["data"]["details"]["user_id"] == "sio-user"
    assert welcome["data"]["details"]["authenticated"] is False


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_chat_crosses_transports_both_ways(
    sio_connect: Any, connect: Any, transport: str
) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    native = await connect("/ws?user_id=native-user")
    await native.join(room)
    client = await sio_connect(transport, headers={"User-ID": "sio-user"})
    await client.recv()  # welcome

    # Socket.IO -> native, the seed's way: an object.
    await client.emit(
        {"code": "chat", "room_id": room, "data": {"message": "from sio", "sender": "sio-user"}}
    )
    mine = await client.recv_until(lambda m: m["code"] == "chat_response")
    assert mine["data"]["message"] == "from sio"
    assert mine["user_id"] == "sio-user"
    heard = await native.recv_until(
        lambda m: m["code"] == "chat_response" and m["data"]["message"] == "from sio"
    )
    assert heard["event_id"] == mine["event_id"]

    # native -> Socket.IO.
    await native.chat(room, "from native")
    answer = await client.recv_until(
        lambda m: m["code"] == "chat_response" and m["data"]["message"] == "from native"
    )
    assert answer["user_id"] == "native-user"


async def test_a_string_payload_is_taken_as_a_frame(sio_connect: Any) -> None:
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()
    await client.emit('{"code": "chat", "room_id": "r-str", "data": {"message": "s"}}')
    mine = await client.recv_until(lambda m: m["code"] == "chat_response")
    assert mine["data"]["message"] == "s"
    await client.emit("not json")
    error = await client.recv_until(lambda m: m["status"] == "error")
    assert error["data"]["details"]["error_code"] == "INVALID_JSON"


async def test_a_token_in_auth_is_the_identity(server: ServerThread, sio_connect: Any) -> None:
    token = mint(server.settings, "token-user")
    client = await sio_connect(auth={"token": token}, headers={"User-ID": "ignored"})
    welcome = await client.recv()
    assert welcome["data"]["details"]["user_id"] == "token-user"
    assert welcome["data"]["details"]["authenticated"] is True


async def test_a_bad_token_gives_connect_error(server: ServerThread) -> None:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []

    async def on_connect_error(data: Any) -> None:
        errors.append(data)

    client.on("connect_error", on_connect_error)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            server.http,
            socketio_path="/ws",
            transports=["websocket"],
            auth={"token": "not-a-jwt"},
            wait_timeout=TIMEOUT,
        )
    assert errors, "no connect_error"
    assert errors[0]["message"] == "Authentication failed"
    assert not client.connected


async def test_last_event_id_in_auth_replays_then_completes(sio_connect: Any, connect: Any) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    first = await sio_connect(headers={"User-ID": "resumer"})
    welcome = await first.recv()
    await first.emit({"code": "join", "room_id": room})
    joined = await first.recv_until(lambda m: m["code"] == "system" and m["room_id"] == room)
    seen = joined.get("event_id", welcome["data"]["details"]["last_event_id"])
    await first.sio.disconnect()

    native = await connect("/ws?user_id=talker")
    for text in ("missed 1", "missed 2"):
        await native.chat(room, text)
    await native.recv_until(
        lambda m: m["code"] == "chat_response" and m["data"]["message"] == "missed 2"
    )

    again = await sio_connect(
        headers={"User-ID": "resumer"},
        auth={"last_event_id": seen, "log_id": welcome["data"]["details"]["log_id"]},
    )
    assert (await again.recv())["code"] == "system"  # the welcome first
    texts: list[str] = []
    while True:
        message = await again.recv()
        if message["data"].get("details", {}).get("replay_complete"):
            break
        if message["code"] == "chat_response":
            texts.append(message["data"]["message"])
    assert texts == ["missed 1", "missed 2"]


async def test_without_socketio_an_eio_request_does_not_reach_it(start_server: Any) -> None:
    plain = start_server(socketio=False)
    mounted = start_server()
    query = {"EIO": "4", "transport": "polling"}
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        on = await http.get(f"{mounted.http}/ws/", params=query)
        off = await http.get(f"{plain.http}/ws/", params=query)
    assert on.status_code == 200 and on.text.startswith("0{"), on.text  # engine.io open
    assert off.status_code == 404, off.text


# -- acknowledgement callbacks -------------------------------------------------------------------


async def test_a_callback_receives_the_envelope_that_acknowledges_the_message(
    sio_connect: Any, connect: Any
) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    native = await connect("/ws?user_id=native-user")
    await native.join(room)
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()
    chat = {"code": "chat", "room_id": room, "client_msg_id": "m-1", "data": {"message": "hi"}}

    ack = await client.call(chat)

    assert ack["status"] == "success" and ack["code"] == "chat_response"
    assert ack["client_msg_id"] == "m-1" and ack["data"]["message"] == "hi"
    delivered = await client.recv_until(lambda m: m["code"] == "chat_response")
    assert delivered == ack, "the callback gets the sender's copy itself"
    heard = await native.recv_code("chat_response")
    assert heard["event_id"] == ack["event_id"]

    again = await client.call(chat)  # a resend: the original event, not a new one
    assert again["event_id"] == ack["event_id"]


async def test_a_callback_receives_the_error_pending_or_page(sio_connect: Any) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()

    refused = await client.call({"code": "fly", "room_id": room, "client_msg_id": "bad-1"})
    assert refused["status"] == "error"
    assert refused["data"]["details"]["error_code"] == "UNSUPPORTED_MESSAGE_TYPE"
    assert refused["client_msg_id"] == "bad-1"

    pending = await client.call({"code": "idea", "room_id": room, "data": {"message": "a"}})
    assert pending["status"] == "pending" and pending["code"] == "idea"
    assert isinstance(pending["event_id"], int)

    page = await client.call({"code": "history", "room_id": room})
    assert page["code"] == "history"
    assert pending["event_id"] not in [e["event_id"] for e in page["data"]["events"]]
    assert [e["code"] for e in page["data"]["events"]] == ["system"]  # the join

    typing = await client.call({"code": "typing", "room_id": room, "data": {"is_typing": True}})
    assert typing is None  # a signal: nothing answers it


async def test_messages_emitted_without_waiting_keep_their_order(sio_connect: Any) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()
    texts = [f"m{n}" for n in range(60)]
    acks = await asyncio.gather(
        *(client.call({"code": "chat", "room_id": room, "data": {"message": t}}) for t in texts)
    )
    assert [a["data"]["message"] for a in acks] == texts
    ids = [a["event_id"] for a in acks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "appended in the order emitted"
    delivered = [(await client.recv_code_chat())["data"]["message"] for _ in texts]
    assert delivered == texts


async def test_a_server_side_close_says_why_before_disconnecting(start_server: Any) -> None:
    server = start_server(rate_limit=1)  # 2 admitted at once, then 10 refusals, then abuse
    client = SioClient()
    disconnected = asyncio.Event()
    client.sio.on("disconnect", lambda *reason: disconnected.set())
    await client.sio.connect(
        server.http, socketio_path="/ws", transports=["websocket"], wait_timeout=TIMEOUT
    )
    try:
        await client.recv()  # welcome
        for n in range(20):
            await client.emit({"code": "typing", "room_id": "r", "data": {"is_typing": n % 2}})

        last = await client.recv_until(lambda m: "close_code" in m["data"].get("details", {}))
        assert last["code"] == "system"
        assert last["data"]["details"] == {
            "close_code": 1008,
            "reason": "rate limit persistently exceeded",
        }
        await asyncio.wait_for(disconnected.wait(), TIMEOUT)
    finally:
        await client.sio.disconnect()
