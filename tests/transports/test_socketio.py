"""Socket.IO at /ws (requests carrying EIO=), driven by python-socketio's AsyncClient."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from productflo.auth import mint
from productflo.envelopes import WELCOME_MESSAGE
from tests.asyncapi import SocketIOCheck
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


class SioClient:
    """An AsyncClient whose `message` events (payload.data, the envelope) land in a queue."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sio.on("message", self._on_message)
        self.checks = SocketIOCheck()  # what it sends and receives, against docs/asyncapi.yaml

    async def _on_message(self, payload: dict[str, Any]) -> None:
        self.checks.event(payload)
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
        self.checks.emitted(data)
        await self.sio.emit("message", data)

    async def call(self, data: Any) -> Any:
        """Emit with a callback; what the server acknowledged it with."""
        self.checks.emitted(data)
        answer = await self.sio.call("message", data, timeout=TIMEOUT)
        self.checks.answered(answer)
        return answer


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


async def refused_connect(server: ServerThread, auth: dict[str, Any]) -> list[Any]:
    """Connect with `auth`, which the server must refuse: what `connect_error` was given."""
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
            auth=auth,
            wait_timeout=TIMEOUT,
        )
    assert not client.connected
    return errors


async def test_a_bad_token_gives_connect_error(server: ServerThread) -> None:
    errors = await refused_connect(server, {"token": "not-a-jwt"})
    assert errors, "no connect_error"
    assert errors[0]["message"] == "Authentication failed"


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


async def test_over_websocket_packets_go_out_as_frames_several_per_socket_write(
    sio_connect: Any, connect: Any, frame_writes: list[int], socket_writes: list[int]
) -> None:
    """A Socket.IO client's packets take the server's frames path (transports/wire.py), and
    those python-engineio sends one after the other reach the socket in one write: a replay of
    40 missed chats, which comes out of the log in one read, arrives whole and in order."""
    room = f"room-{uuid.uuid4().hex[:8]}"
    first = await sio_connect(headers={"User-ID": "resumer"})
    welcome = await first.recv()
    await first.emit({"code": "join", "room_id": room})
    joined = await first.recv_until(lambda m: m["code"] == "system" and m["room_id"] == room)
    await first.sio.disconnect()
    native = await connect("/ws?user_id=talker")
    missed = [f"missed {n}" for n in range(40)]
    for text in missed:
        await native.chat(room, text)
    await native.recv_until(
        lambda m: m["code"] == "chat_response" and m["data"]["message"] == missed[-1]
    )
    frame_writes.clear()
    socket_writes.clear()

    again = await sio_connect(
        headers={"User-ID": "resumer"},
        auth={"last_event_id": joined["event_id"], "log_id": welcome["data"]["details"]["log_id"]},
    )
    texts: list[str] = []
    while not (message := await again.recv())["data"].get("details", {}).get("replay_complete"):
        if message["code"] == "chat_response":
            texts.append(message["data"]["message"])
    assert texts == missed
    assert sum(frame_writes) >= 42, "the welcome, the replay and its end all went out as frames"
    shared = socket_writes and max(socket_writes) > 1
    assert shared, "packets sent one after the other shared a socket write"


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
    # The assistant answers in the room when it gets to it: wait for the answer, so that the page
    # below is the same whether the history is read before or after the answer is committed.
    answer = await client.recv_until(lambda m: m["code"] == "idea_response" and "event_id" in m)

    page = await client.call({"code": "history", "room_id": room})
    assert page["code"] == "history"
    assert pending["event_id"] not in [e["event_id"] for e in page["data"]["events"]]
    assert [e["code"] for e in page["data"]["events"]] == ["system", "idea_response"]  # the join
    assert page["data"]["events"][-1] == answer

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


# -- what python-socketio would take other than a `message` with one argument ------------------


def _server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server logged at ERROR or with a traceback (its thread logs where tests do)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def _error_code(envelope: Any) -> Any:
    assert isinstance(envelope, dict) and envelope["status"] == "error", envelope
    return envelope["data"]["details"]["error_code"]


HISTORY = {"code": "history", "room_id": "r-after"}


@pytest.mark.parametrize("event", ["connect", "disconnect", "connect_error", "fly"])
async def test_an_event_other_than_message_is_refused_and_the_connection_keeps_answering(
    server: ServerThread, sio_connect: Any, event: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Reserved names included: an emitted `disconnect` used to finish the session under a
    live socket (every later ack None), an emitted `connect` to fail its handler's task."""
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()

    answer = await client.sio.call(event, {"code": "chat", "room_id": "r"}, timeout=TIMEOUT)
    assert _error_code(answer) == "UNSUPPORTED_MESSAGE_TYPE"
    assert (await client.recv()) == answer, "the refusal also comes as a message event"

    await client.sio.emit(event)  # no callback: the refusal comes as a message event only
    assert _error_code(await client.recv()) == "UNSUPPORTED_MESSAGE_TYPE"

    page = await client.call(HISTORY)
    assert page is not None and page["code"] == "history", page
    assert client.sio.connected
    assert _server_errors(caplog) == []
    # Audited like any refused frame: the chat's ack means what was submitted before is in.
    chat = {"code": "chat", "room_id": "r-audit", "data": {"message": "after"}}
    assert (await client.call(chat))["code"] == "chat_response"
    refused = await _audited(server, "sio-user", "UNSUPPORTED_MESSAGE_TYPE")
    assert [json.loads(e["data"]["frame"])[0] for e in refused] == [event, event]


async def _audited(server: ServerThread, user: str, code: str) -> list[dict[str, Any]]:
    """The user's rejected events of `code` in GET /admin/events, oldest first."""
    headers = {"Authorization": f"Bearer {mint(server.settings, 'auditor', admin=True)}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/admin/events", params={"user_id": user, "code": code})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


@pytest.mark.parametrize("arguments", [(), ({"code": "chat"}, {"code": "chat"})], ids=["0", "2"])
async def test_a_message_with_no_argument_or_two_is_invalid(
    sio_connect: Any, arguments: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()
    answer = await client.sio.call("message", arguments or None, timeout=TIMEOUT)
    assert _error_code(answer) == "INVALID_MESSAGE"
    assert (await client.call(HISTORY))["code"] == "history"
    assert _server_errors(caplog) == []


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_a_message_nested_350_deep_is_invalid_message(
    sio_connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Deep enough to exhaust a recursive validator, shallow enough for the JSON parser."""
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()
    deep: Any = []
    for _ in range(350):
        deep = [deep]
    chat = {"code": "chat", "room_id": "r", "client_msg_id": "deep", "data": {"deep": deep}}
    answer = await client.call(chat)
    assert _error_code(answer) == "INVALID_MESSAGE"
    assert answer["client_msg_id"] == "deep"
    assert (await client.call(HISTORY))["code"] == "history"
    assert _server_errors(caplog) == []


async def test_a_number_json_does_not_have_is_invalid_json(sio_connect: Any) -> None:
    """Socket.IO's packets are read by a parser that takes NaN; the message is not JSON."""
    client = await sio_connect(headers={"User-ID": "sio-user"})
    await client.recv()
    chat = {"code": "chat", "room_id": "r", "data": {"message": "x", "n": float("nan")}}
    assert _error_code(await client.call(chat)) == "INVALID_JSON"
    assert (await client.call(HISTORY))["code"] == "history"


class RawSocketIO:
    """Engine.IO and Socket.IO spoken by hand over a WebSocket, for packets no client sends."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, server: ServerThread) -> RawSocketIO:
        raw = await cls.engineio(server)
        await raw.send("40")
        assert (await raw.recv()).startswith("40{"), "the Socket.IO connect packet"
        welcome = await raw.recv()
        assert welcome.startswith('42["message"') and WELCOME_MESSAGE in welcome, welcome
        return raw

    @classmethod
    async def engineio(cls, server: ServerThread) -> RawSocketIO:
        """Open at the Engine.IO level only: no Socket.IO CONNECT sent yet."""
        url = f"{server.ws}/ws/?EIO=4&transport=websocket"
        raw = cls(await ws_connect(url, max_size=None, open_timeout=TIMEOUT, close_timeout=1))
        assert (await raw.recv()).startswith("0{"), "the Engine.IO open packet"
        return raw

    async def send(self, packet: str) -> None:
        await self.connection.send(packet)

    async def recv(self) -> str:
        """The next packet that is not a ping (answered, as a client must)."""
        while True:
            packet = await asyncio.wait_for(self.connection.recv(), TIMEOUT)
            assert isinstance(packet, str)
            if packet != "2":
                return packet
            await self.connection.send("3")

    async def ack(self, packet_id: int) -> Any:
        """The argument of the acknowledgement of packet `packet_id`, skipping message events."""
        prefix = f"43{packet_id}"
        async with asyncio.timeout(TIMEOUT):
            while not (packet := await self.recv()).startswith(prefix + "["):
                pass
        return json.loads(packet[len(prefix) :])[0]

    async def until_disconnected(self) -> list[str]:
        """The packets before the server's DISCONNECT."""
        packets: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while (packet := await self.recv()) != "41":
                packets.append(packet)
        return packets

    async def closed_with(self) -> tuple[int | None, list[str]]:
        """The close code, and the packets that came before it."""
        packets: list[str] = []
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    packets.append(await self.recv())
        except ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else None), packets

    async def close(self) -> None:
        await self.connection.close()


@pytest.fixture
async def raw_connect(server: ServerThread) -> AsyncIterator[Any]:
    opened: list[RawSocketIO] = []

    async def open_raw(target: ServerThread = server) -> RawSocketIO:
        raw = await RawSocketIO.open(target)
        opened.append(raw)
        return raw

    yield open_raw
    for raw in opened:
        await raw.close()


async def test_text_is_measured_as_it_was_sent_not_as_escaped_json(raw_connect: Any) -> None:
    """40,000 bytes of accented letters, as a JavaScript client sends them: under
    PRODUCTFLO_MAX_MESSAGE_BYTES as sent, though 120,000 characters once each letter is escaped
    as JSON \\u00e9."""
    raw = await raw_connect()
    text = "é" * 20_000
    chat = {"code": "chat", "room_id": "r-accents", "data": {"message": text}}
    await raw.send("421" + json.dumps(["message", chat], ensure_ascii=False))
    ack = await raw.ack(1)
    assert ack["code"] == "chat_response", ack
    assert ack["data"]["message"] == text


@pytest.mark.parametrize("depth", [350, 5_000])
async def test_a_packet_nested_deeper_than_the_parser_goes_is_answered(
    raw_connect: Any, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Past about 1,000 levels python-socketio's own JSON parser gives up (RecursionError): the
    packet is still answered INVALID_MESSAGE, through its acknowledgement."""
    raw = await raw_connect()
    await raw.send(f'421["message",{{"code":"chat","room_id":"r","data":{_nested(depth)}}}]')
    assert _error_code(await raw.ack(1)) == "INVALID_MESSAGE"
    await raw.send(f"422{_nested(depth)}")  # not even an event name
    assert _error_code(await raw.ack(2)) == "INVALID_MESSAGE"
    await raw.send('423["message",{"code":"history","room_id":"r"}]')
    assert (await raw.ack(3))["code"] == "history"
    assert _server_errors(caplog) == []


async def test_a_packet_nested_100000_deep_is_answered_where_the_limit_allows_it(
    start_server: Any, connect_to: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(max_message_bytes=300_000)
    raw = await RawSocketIO.open(server)
    try:
        await raw.send(f'421["message",{_nested(100_000)}]')
        assert _error_code(await raw.ack(1)) == "INVALID_MESSAGE"
        await raw.send('422["message",{"code":"history","room_id":"r"}]')
        assert (await raw.ack(2))["code"] == "history"
    finally:
        await raw.close()
    assert _server_errors(caplog) == []


async def test_a_connect_whose_auth_is_nested_too_deep_is_refused(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Not taken for a connection without auth: its token may be in there."""
    raw = await RawSocketIO.engineio(server)
    try:
        await raw.send(f'40{{"token":{_nested(5_000)}}}')
        refused = await raw.recv()
        assert refused.startswith("44"), refused  # CONNECT_ERROR
        assert json.loads(refused[2:]) == {"message": "auth is nested too deep"}
    finally:
        await raw.close()
    assert _server_errors(caplog) == []


@pytest.mark.parametrize("frame", ["x", ""], ids=["not a packet type", "empty"])
async def test_a_frame_that_is_not_engineio_closes_the_websocket_without_a_traceback(
    raw_connect: Any, frame: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await raw_connect()
    await raw.send(frame)
    code, _ = await raw.closed_with()
    assert code == 1000
    assert _server_errors(caplog) == []


@pytest.mark.parametrize(
    "packet",
    ["4" + _nested(5_000), '423["message"', '451-4["message",{"_placeholder":true,"num":7}]'],
    ids=["deep engine.io data", "bad json", "no such attachment"],
)
async def test_a_packet_that_is_not_socketio_closes_the_connection_saying_why(
    raw_connect: Any, packet: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The packet cannot be answered: the last envelope says why (1008), then the server
    disconnects; nothing sent after it is answered."""
    raw = await raw_connect()
    await raw.send(packet)
    await raw.send('425["message",{"code":"history","room_id":"r"}]')  # or the attachment
    [closing] = await raw.until_disconnected()
    assert closing.startswith('42["message"'), closing
    assert json.loads(closing[2:])[1]["data"]["data"]["details"] == {
        "close_code": 1008,
        "reason": "invalid packet",
    }
    assert _server_errors(caplog) == []


async def test_a_frame_over_the_limit_closes_the_websocket_with_1009(
    raw_connect: Any, server: ServerThread
) -> None:
    raw = await raw_connect()
    chat = {
        "code": "chat",
        "room_id": "r",
        "data": {"message": "x" * server.settings.max_message_bytes},
    }
    await raw.send("421" + json.dumps(["message", chat]))
    code, _ = await raw.closed_with()
    assert code == 1009


async def _poll(http: httpx.AsyncClient, sid: str) -> list[str]:
    """One long-polling GET: the Engine.IO packets it brings."""
    response = await http.get("/ws/", params={"EIO": "4", "transport": "polling", "sid": sid})
    assert response.status_code == 200, response.text
    return response.text.split("\x1e")


@pytest.mark.parametrize("size", [1, 1_000_000], ids=["just over", "over a megabyte"])
async def test_a_frame_over_the_limit_by_long_polling_is_told_1009_before_the_disconnect(
    server: ServerThread, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    """python-engineio would answer a POST over its buffer size 400 and drop the connection
    without a word (its default size was a megabyte). Spoken by hand: python-socketio's own
    client leaks its HTTP session on a server-side disconnect now and then."""
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        opened = await http.get("/ws/", params={"EIO": "4", "transport": "polling"})
        sid = json.loads(opened.text[1:])["sid"]
        query = {"EIO": "4", "transport": "polling", "sid": sid}
        assert (await http.post("/ws/", params=query, content="40")).status_code == 200
        packets = await _poll(http, sid)
        while not any(WELCOME_MESSAGE in p for p in packets):
            packets += await _poll(http, sid)

        text = "x" * (server.settings.max_message_bytes + size)
        chat = {"code": "chat", "room_id": "r", "data": {"message": text}}
        posted = await http.post("/ws/", params=query, content="42" + json.dumps(["message", chat]))
        assert posted.status_code == 200, posted.text

        packets = []
        while "41" not in packets:  # the server's DISCONNECT
            packets += await _poll(http, sid)
    closing = [json.loads(p[2:])[1]["data"] for p in packets if p.startswith('42["message"')]
    assert closing[-1]["data"]["details"] == {"close_code": 1009, "reason": "message too big"}
    assert _server_errors(caplog) == []
