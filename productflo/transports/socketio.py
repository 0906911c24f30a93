"""Socket.IO at `/ws`: identify the client, then run the same Session as the native endpoint.

Only the framing differs: the client emits event `message` (an object or a JSON string), and the
server emits event `message` with `{"data": envelope}`. An emit with a callback gets the envelope
that answers it (its acknowledgement, `pending`, its error, the history page). Requests reach this
server only when they carry `EIO=` (see `SocketIODispatch`); the rest of `/ws` is the native
endpoint.

Each event handler runs in a task of its own (so that waiting for an answer holds up neither the
client's next messages nor its pings), and the first thing it does, before it awaits anything, is
put the frame in its connection's inbox: python-socketio starts the handlers in the order the
packets came, so the inbox keeps that order, and one reader per connection feeds the session.

What python-socketio would take other than a `message` with one argument is answered here (SPEC
section 6: every frame gets one answer or a close): any other event name, the reserved ones
included, is UNSUPPORTED_MESSAGE_TYPE; a `message` with no argument or several, or a packet
nested too deep for the JSON parser, is INVALID_MESSAGE (each counted by the rate limit and
audited, as the session's own refusals are); a packet that is not Socket.IO at all closes the
connection (1008). An Engine.IO packet over PRODUCTFLO_MAX_MESSAGE_BYTES closes it
with 1009: over WebSocket the server (uvicorn's `ws_max_size`) closes the socket with that code,
over HTTP long-polling the last envelope says so (`closing_envelope`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, ClassVar
from urllib.parse import parse_qs

import engineio.async_drivers.asgi
import engineio.json
import engineio.payload
import socketio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from productflo import metrics
from productflo.auth import TokenVerifier, check_origin
from productflo.envelopes import error_envelope, system_envelope
from productflo.errors import (
    AuthenticationFailed,
    CloseCode,
    ErrorCode,
    ForbiddenOrigin,
    ProtocolError,
)
from productflo.events.models import JsonObject
from productflo.identity import generated_user_id, id_problem
from productflo.jsontext import storable
from productflo.outbox import Outgoing, text_frame
from productflo.session import Identity, Resume, Session
from productflo.settings import Settings
from productflo.transports import wire

log = logging.getLogger(__name__)

CLOSE_FLUSH_SECONDS = 5.0  # longest a closing socket waits for what is queued to be written

PATH = "/ws"
OPEN_TIMEOUT = 10.0  # longest wait for the Socket.IO handshake to finish before the welcome
# Frames waiting for the session (it reads them at its own pace, MAX_IN_FLIGHT appends at a time);
# a client this far ahead is flooding, and is closed as the native endpoint would close it.
INBOX_LIMIT = 1000
EVENT = "message"  # the one event a client emits (SPEC section 3)

_KEPT = 2048  # characters of a refused packet's text kept for its audit


@dataclass(frozen=True)
class Refused:
    """A frame the transport refused itself, and its text as the audit keeps it."""

    error: ProtocolError
    frame: str


# What the reader hands the session: a frame, or one the transport refused.
Inbound = str | bytes | Refused

_FAILED = ProtocolError(
    ErrorCode.FAILED_TO_PROCESS_MESSAGE,
    "The message could not be processed; it was not delivered. Try again.",
)


@dataclass(frozen=True)
class TooDeep:
    """What `PacketJson.loads` gives for JSON nested deeper than the parser can go: the start
    of its text, for the audit."""

    text: str


class PacketJson:
    """The JSON module python-socketio and python-engineio decode packets with (`json=`).

    It is engineio.json (integers of at most 100 digits), but for nesting too deep for the
    parser: that RecursionError would escape python-socketio's decoding (the packet would never
    be answered, a traceback logged), and python-engineio's too (its WebSocket reader would end
    with the exception). `loads` gives a TooDeep instead, which `_Server` answers with
    INVALID_MESSAGE. Set through `json=`, it is the libraries' for the whole process: they keep
    it on their packet classes."""

    dumps = staticmethod(engineio.json.dumps)

    @staticmethod
    def loads(text: str | bytes, **options: Any) -> Any:
        try:
            return engineio.json.loads(text, **options)
        except RecursionError:
            start = text[:_KEPT]
            return TooDeep(start if isinstance(start, str) else start.decode("utf-8", "replace"))


def event_refusal(data: object) -> Refused | None:
    """Why a client's EVENT packet (its decoded data: the event name, then the arguments) is not
    a `message` with one argument; None when it is."""
    if isinstance(data, TooDeep):
        return Refused(_invalid("The message is nested too deep"), data.text)
    text = _text(data)
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        return Refused(_invalid("An event is a name and its arguments"), text)
    if data[0] != EVENT:
        name = storable(data[0][:64])
        message = f"Unsupported Socket.IO event: {name!r}; the event is {EVENT!r}"
        return Refused(ProtocolError(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, message), text)
    if len(data) != 2:
        return Refused(_invalid(f"The {EVENT!r} event takes one argument: the message"), text)
    return None


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _text(data: object) -> str:
    """Decoded packet data as JSON text again, for the audit (binary attachments as `null`)."""
    try:
        return json.dumps(data, ensure_ascii=False, default=lambda _: None)[:_KEPT]
    except RecursionError:  # deep enough to decode, too deep to encode again
        return ""


# What python-socketio raises for a packet it cannot decode or take: ValueError for a packet
# type, id, attachment count or JSON it cannot read, the others for binary placeholders that
# point nowhere (and for nesting too deep to put the attachments back).
_UNDECODABLE = (ValueError, TypeError, LookupError, RecursionError)


class _Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, with every packet a client sends answered or refused.

    python-socketio dispatches a client's EVENT by its name alone, reserved names included: an
    emitted `disconnect` ran our disconnect handler (the session finished under a live socket),
    an emitted `connect` our connect handler with the wrong arguments, and an unknown name was
    dropped. A catch-all handler (`on("*")`) never sees the reserved names, so the hook is
    `_handle_event`, where every client EVENT and BINARY_EVENT passes before a handler is
    chosen, and only those (connect and disconnect come through `_handle_connect` and
    `_handle_disconnect`). Whatever is not a `message` with one argument is handed to the
    `message` handler as its refusal, so that it is answered in its turn through the same
    inbox, acknowledgement included, as every other frame."""

    def __init__(self, **options: Any) -> None:
        super().__init__(json=PacketJson, **options)
        self.connections: dict[str, _Connection] = {}
        self.websockets: dict[str, _FramesWebSocket] = {}  # by Engine.IO sid, while open

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        refusal = event_refusal(data)
        if refusal is not None:
            data = [EVENT, refusal]
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except _UNDECODABLE as failure:
            # Not Socket.IO: nothing in it can be answered. python-engineio would log the
            # exception with its traceback and read on.
            problem = type(failure).__name__
            log.info("socket.io %s sent an undecodable packet (%s)", eio_sid, problem)
            await self.close_connection(eio_sid, CloseCode.POLICY_VIOLATION, "invalid packet")

    async def close_connection(self, eio_sid: str, code: int, reason: str) -> None:
        """Close a client's connection with a close code, told as its last envelope when it has
        a session; the Engine.IO connection alone when it has none yet."""
        connection = self.connections.get(self.manager.sid_from_eio_sid(eio_sid, "/") or "")
        if connection is not None:
            connection.session.request_close(code, reason)
        elif eio_sid in self.eio.sockets:
            metrics.count_close(code)
            await self.eio.disconnect(eio_sid)


class SocketIOTransport:
    name = "socketio"

    def __init__(self, sio: socketio.AsyncServer, sid: str) -> None:
        self._sio = sio
        self._sid = sid
        self._closing: asyncio.Task[None] | None = None

    async def send(self, messages: Sequence[Outgoing]) -> None:
        """Hand the envelopes to Engine.IO as the packets `emit("message", {"data": envelope})`
        would build, but built once per event for all its recipients (`Outgoing.event`) and
        queued here in order: python-socketio's `emit` encodes the packet again for each call
        and sends it from a task of its own."""
        eio_sid = self._sio.manager.eio_sid_from_sid(self._sid, "/")
        if eio_sid is None:  # disconnected: as `emit` would, send nothing
            return
        for message in messages:
            await self._sio.eio.send(eio_sid, message.event)

    async def close(self, code: int, reason: str) -> None:
        # Socket.IO has no close codes: the last envelope says why, then the server disconnects.
        log.info("socket.io %s closed by the server: %d %s", self._sid, code, reason)
        await self.send([Outgoing(closing_envelope(code, reason))])
        # Disconnecting runs the disconnect handler, which finishes the session (and so cancels
        # the writer task calling this): let it run in a task of its own.
        eio_sid = self._sio.manager.eio_sid_from_sid(self._sid, "/")
        websocket = self._sio.websockets.get(eio_sid or "")
        if code == CloseCode.SERVICE_RESTART and websocket is not None:
            # The socket closed 1012 under Socket.IO, as when a server goes away: the client
            # reconnects by itself ("transport close"), where a Socket.IO disconnect would leave
            # it disconnected. (Over polling, python-engineio's close packet does the same.)
            self._closing = asyncio.create_task(websocket.close_with(code, reason))
        elif code == CloseCode.SERVICE_RESTART and eio_sid is not None:
            self._closing = asyncio.create_task(self._sio.eio.disconnect(eio_sid))
        else:
            self._closing = asyncio.create_task(self._sio.disconnect(self._sid))


def closing_envelope(code: int, reason: str) -> JsonObject:
    """What a WebSocket close code tells a native client, as a Socket.IO client's last envelope."""
    details: JsonObject = {"close_code": code, "reason": reason}
    return system_envelope(None, f"Connection closed by the server: {reason}", details)


class _Connection:
    """One client: its session, and the frames it sent that the session has not taken yet."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.opened: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.inbox: asyncio.Queue[tuple[Inbound, asyncio.Future[JsonObject | None]]] = (
            asyncio.Queue()
        )
        self.unanswered: set[asyncio.Future[JsonObject | None]] = set()

    async def read(self) -> None:
        """Feed the session the client's frames in the order they came, once it is open."""
        assert self.opened is not None
        await asyncio.wait([self.opened])
        if self.opened.cancelled() or self.opened.exception() is not None:
            return  # the client went away, or open_session logged and disconnected
        while True:
            item, answer = await self.inbox.get()
            answered = functools.partial(_settle, answer)
            if isinstance(item, Refused):  # refused by the transport's own rule: audited too
                metrics.count_inbound(None)
                self.session.refuse(item.error, answered, frame=item.frame)
                continue
            try:
                await self.session.process(item, answered)  # admitted as it arrived
            except Exception:  # a bug: logged, the frame answered, and the reader reads on
                log.exception("socket.io session %s could not take a frame", self.session.id)
                if not answer.done():
                    self.session.refuse(_FAILED, answered)

    def close(self) -> None:
        """The client is gone: nothing it sent is waiting for an answer any more."""
        for task in (self.opened, self.reader):
            if task is not None and not task.done():
                task.cancel()
        for answer in self.unanswered:
            _settle(answer, None)


def _settle(answer: asyncio.Future[JsonObject | None], envelope: JsonObject | None) -> None:
    if not answer.done():
        answer.set_result(envelope)


def _cookies(environ: dict[str, Any]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except Exception:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def _query(environ: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(environ.get("QUERY_STRING", ""))
    return {key: values[0] for key, values in parsed.items() if values}


async def identify(
    settings: Settings, verifier: TokenVerifier, environ: dict[str, Any], auth: dict[str, Any]
) -> Identity:
    """auth.token (or the access_token cookie, origin permitting), else header User-ID, else
    cookie user_id, else a generated id. Raises socketio's ConnectionRefusedError to refuse."""
    cookies = _cookies(environ)
    token = auth.get("token")
    from_cookie = False
    if not token and cookies.get("access_token"):
        token, from_cookie = cookies["access_token"], True
    if token:
        try:
            if from_cookie:
                check_origin(settings, environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"))
            claims = await verifier.verify_async(str(token))
        except ForbiddenOrigin as failure:
            log.info("socket.io connection refused: %s", failure)
            metrics.count_close(CloseCode.FORBIDDEN_ORIGIN)  # what the native endpoint closes with
            raise socketio.exceptions.ConnectionRefusedError(
                "Authentication failed: origin not allowed"
            ) from failure
        except AuthenticationFailed as failure:
            log.info("socket.io connection refused: %s", failure)
            metrics.count_close(CloseCode.AUTHENTICATION_FAILED)
            raise socketio.exceptions.ConnectionRefusedError("Authentication failed") from failure
        return Identity(user_id=claims.subject, authenticated=True, claims=claims)
    named = environ.get("HTTP_USER_ID") or cookies.get("user_id")
    problem = id_problem(named) if named is not None else None
    if problem is not None:
        metrics.count_close(CloseCode.POLICY_VIOLATION)
        raise socketio.exceptions.ConnectionRefusedError(problem)
    return Identity(user_id=named or generated_user_id(), authenticated=False)


class _FramesWebSocket(engineio.async_drivers.asgi.WebSocket):  # type: ignore[misc]
    """python-engineio's ASGI WebSocket, but a text packet goes out as a frame written straight
    to the socket where the server offers it (productflo.transports.wire), as the native
    endpoint's envelopes do, rather than as an ASGI `websocket.send`: the packets a Socket.IO
    client's writer sends one after the other then reach the socket in one write. Everything
    python-engineio sends still passes its one queue, in its order."""

    # Set by create_server: told the Engine.IO sid of a connection the server is stopping, and
    # where the open ones are found by it.
    on_shutdown: Callable[[str], None] | None = None
    registry: ClassVar[dict[str, _FramesWebSocket]] = {}

    async def __call__(self, environ: dict[str, Any]) -> str:
        extensions = environ["asgi.scope"].get("extensions") or {}
        frames = extensions.get(wire.EXTENSION)
        self._write_frames = frames["write"] if frames else None
        shutdown = extensions.get(wire.SHUTDOWN)
        socket = getattr(self.handler, "__self__", None)  # python-engineio's socket
        sid = getattr(socket, "sid", None)
        if shutdown is not None and isinstance(sid, str) and self.on_shutdown is not None:
            # The server stopping: acknowledge what was taken, say 1012, then close (as the
            # native endpoint does) rather than uvicorn's immediate 1012 (transports/wire.py).
            shutdown["register"](functools.partial(self.on_shutdown, sid))
        if isinstance(sid, str):
            self.registry[sid] = self
        try:
            result: str = await super().__call__(environ)
        finally:
            if isinstance(sid, str) and self.registry.get(sid) is self:
                del self.registry[sid]
        return result

    async def close_with(self, code: int, reason: str) -> None:
        """Close the socket itself with a close code (python-engineio's `close` says 1000),
        once what is queued for it is written (the closing envelope last)."""
        socket = getattr(self.handler, "__self__", None)
        with contextlib.suppress(Exception):  # already closed: nothing to do
            if socket is not None:
                async with asyncio.timeout(CLOSE_FLUSH_SECONDS):
                    await socket.queue.join()
            await self.asgi_send({"type": "websocket.close", "code": code, "reason": reason})

    async def send(self, message: str | bytes) -> None:
        if self._write_frames is not None and isinstance(message, str):
            await self._write_frames([text_frame(message.encode())])
        else:
            await super().send(message)


def create_server(app_state: Any, settings: Settings) -> _Server:
    """The Socket.IO server; `app_state` is the FastAPI app's state (hub, verifier)."""
    # python-engineio refuses a long-polling POST of more than 16 packets (400, and the session
    # dropped), while Socket.IO's clients put whatever they have queued into one POST, up to the
    # handshake's maxPayload in bytes: a burst, or an outbox resent after a reconnect, would be
    # dropped again every time. A POST is bounded in bytes already (max_http_buffer_size below),
    # so its packets are bounded only by what those bytes can hold. (A class attribute: it is
    # the same for every Engine.IO server and client in the process.)
    engineio.payload.Payload.max_decode_packets = settings.max_message_bytes
    sio = _Server(
        async_mode="asgi",
        # Same origin unless PRODUCTFLO_ALLOWED_ORIGINS names the allowed ones.
        cors_allowed_origins=settings.allowed_origins or None,
        # Each event in a task of its own; `message` restores their order (the module docstring).
        async_handlers=True,
        ping_interval=settings.socketio_ping_interval,
        ping_timeout=settings.socketio_ping_timeout,
        # What one Engine.IO packet may hold: a frame's limit, as on the native endpoint (over
        # HTTP long-polling, `asgi_app` closes with 1009 before python-engineio would refuse it).
        max_http_buffer_size=settings.max_message_bytes,
        logger=False,
        engineio_logger=False,
    )
    connections = sio.connections

    def restart(eio_sid: str) -> None:
        task = asyncio.create_task(
            sio.close_connection(eio_sid, CloseCode.SERVICE_RESTART, "server restarting")
        )
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    # python-engineio takes its WebSocket class from its async driver's table.
    websocket = type(
        "WebSocket",
        (_FramesWebSocket,),
        {"on_shutdown": staticmethod(restart), "registry": sio.websockets},
    )
    sio.eio._async = {**sio.eio._async, "websocket": websocket}

    async def open_session(sid: str, connection: _Connection, resume: object) -> None:
        # The welcome must follow the CONNECT packet, which is sent after the connect handler.
        async with asyncio.timeout(OPEN_TIMEOUT):
            while not sio.manager.is_connected(sid, "/"):
                if sid not in connections:
                    return
                await asyncio.sleep(0.005)
        session = connection.session
        try:
            await session.open(resume if isinstance(resume, Resume) else None)
        except Exception:
            log.exception("could not open a socket.io session for %s", session.user_id)
            metrics.count_close(CloseCode.INTERNAL_ERROR)
            await sio.disconnect(sid)
            raise
        if isinstance(resume, ProtocolError):
            session.deliver(error_envelope(session.user_id, resume))

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if isinstance(auth, TooDeep):
            raise socketio.exceptions.ConnectionRefusedError("auth is nested too deep")
        fields: dict[str, Any] = auth if isinstance(auth, dict) else {}
        identity = await identify(settings, app_state.verifier, environ, fields)
        query = _query(environ)
        resume: Resume | ProtocolError | None
        try:
            resume = Resume.parse(
                fields.get("last_event_id", query.get("last_event_id")),
                fields.get("log_id", query.get("log_id")),
            )
        except ProtocolError as error:
            resume = error
        hub = app_state.hub
        transport = SocketIOTransport(sio, sid)
        session = Session(hub, hub.store, hub.access, settings, identity, transport)
        connection = _Connection(session)
        connections[sid] = connection
        connection.opened = asyncio.create_task(open_session(sid, connection, resume))
        # Its failure is logged there; mark it retrieved for when no message awaits it.
        connection.opened.add_done_callback(lambda task: task.cancelled() or task.exception())
        connection.reader = asyncio.create_task(connection.read(), name=f"socketio-reader-{sid}")

    async def message(sid: str, data: Any = None) -> JsonObject | None:
        """Queue the frame (before any await: see the module docstring), then wait for the
        envelope that answers it, which python-socketio hands to the client's callback."""
        connection = connections.get(sid)
        if connection is None:
            return None
        answer: asyncio.Future[JsonObject | None] = asyncio.get_running_loop().create_future()
        answered = functools.partial(_settle, answer)
        item = _inbound(data)
        frame = item.frame if isinstance(item, Refused) else item
        session = connection.session
        connection.unanswered.add(answer)
        try:
            # The limits are judged as frames arrive, not as the session gets through them: a
            # flood is refused at once, and only admitted frames wait in the inbox.
            if connection.inbox.qsize() >= INBOX_LIMIT:
                session.refuse_flood(frame, answered)
            elif session.admit(frame, answered):
                connection.inbox.put_nowait((item, answer))
            return await answer
        finally:
            connection.unanswered.discard(answer)

    def _inbound(data: object) -> Inbound:
        """The frame a `message` argument stands for (a string is one already), or its refusal
        (`_Server._handle_event`, or data that has no JSON text)."""
        if isinstance(data, str | bytes | Refused):
            return data
        try:
            # Not ASCII-escaped: the frame is measured against PRODUCTFLO_MAX_MESSAGE_BYTES
            # about as long as it came, not six characters for each accented letter.
            return json.dumps(data, ensure_ascii=False)
        except (TypeError, RecursionError):  # bytes inside it (binary attachments), or too deep
            return Refused(_invalid("The message must be JSON"), _text(data))

    async def disconnect(sid: str, reason: Any = None) -> None:
        connection = connections.pop(sid, None)
        if connection is None:
            return
        connection.close()
        await connection.session.finish()

    sio.on("connect", connect)
    sio.on("message", message)
    sio.on("disconnect", disconnect)
    return sio


class SocketIODispatch:
    """ASGI middleware: `/ws` requests carrying `EIO=` go to Socket.IO, the rest to the app."""

    def __init__(self, app: ASGIApp, socketio_app: ASGIApp) -> None:
        self.app = app
        self.socketio_app = socketio_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and scope["path"].rstrip("/") == PATH
            and b"EIO=" in scope.get("query_string", b"")
        ):
            await self.socketio_app(scope, receive, send)
            return
        await self.app(scope, receive, send)


def asgi_app(sio: _Server) -> ASGIApp:
    return _SocketIOApp(sio)


_PACKET_TYPES = frozenset("0123456789")
_DRAINED = 16  # of an oversized POST, at most this many times the limit is read before answering


class _SocketIOApp:
    """python-socketio's ASGI app, with two kinds of request taken before python-engineio sees
    them: a long-polling POST over its `max_http_buffer_size`, which it would answer 400 and
    drop the connection without a word, and a WebSocket text frame it cannot read the packet type
    of (empty, or not a digit), which it reads outside its error handling."""

    def __init__(self, sio: _Server) -> None:
        self._sio = sio
        self._limit: int = sio.eio.max_http_buffer_size
        self._app = socketio.ASGIApp(sio, socketio_path=PATH.strip("/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _length(scope) > self._limit:
            await self._too_big(scope, receive, send)
            return
        if scope["type"] == "websocket":
            receive = _packets_only(receive)
        await self._app(scope, receive, send)

    async def _too_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A frame over PRODUCTFLO_MAX_MESSAGE_BYTES: the session closes with 1009, its last
        envelope saying so (on the GET the client is polling with), as the native endpoint
        closes; the POST itself is answered as taken, so that the client reads that envelope
        rather than failing its transport first."""
        sid = parse_qs(scope["query_string"].decode("latin-1")).get("sid", [""])[0]
        await self._sio.close_connection(sid, CloseCode.MESSAGE_TOO_BIG, "message too big")
        # Read the body (and drop it) before answering, up to a bound: a client still sending
        # it would take an early answer for a failed request, and fail its transport first.
        message, drained = await receive(), 0
        while message.get("more_body") and drained < _DRAINED * self._limit:
            drained += len(message.get("body", b""))
            message = await receive()
        headers = [(b"content-type", b"text/plain; charset=UTF-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"OK"})


def _length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _packets_only(receive: Receive) -> Receive:
    """`receive`, but a text frame that does not start with an Engine.IO packet type ends the
    connection as the client's close would: python-engineio would raise from its WebSocket
    reader, a traceback in the log and the socket left to its ping timeout."""

    async def checked() -> Message:
        message = await receive()
        text = message.get("text") if message["type"] == "websocket.receive" else None
        if text is not None and text[:1] not in _PACKET_TYPES:
            log.info("socket.io: a WebSocket frame that is not Engine.IO; closing")
            return {"type": "websocket.disconnect", "code": CloseCode.POLICY_VIOLATION}
        return message

    return checked
