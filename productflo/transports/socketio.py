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
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import socketio
from starlette.types import ASGIApp, Receive, Scope, Send

from productflo.auth import TokenVerifier, check_origin
from productflo.envelopes import error_envelope, system_envelope
from productflo.errors import AuthenticationFailed, CloseCode, ForbiddenOrigin, ProtocolError
from productflo.events.models import JsonObject
from productflo.session import Identity, Resume, Session
from productflo.settings import Settings
from productflo.transports.native import generated_user_id, id_problem

log = logging.getLogger(__name__)

PATH = "/ws"
OPEN_TIMEOUT = 10.0  # longest wait for the Socket.IO handshake to finish before the welcome
# Frames waiting for the session (it reads them at its own pace, MAX_IN_FLIGHT appends at a time);
# a client this far ahead is flooding, and is closed as the native endpoint would close it.
INBOX_LIMIT = 1000


class SocketIOTransport:
    name = "socketio"

    def __init__(self, sio: socketio.AsyncServer, sid: str) -> None:
        self._sio = sio
        self._sid = sid
        self._closing: asyncio.Task[None] | None = None

    async def send(self, message: JsonObject) -> None:
        await self._sio.emit("message", {"data": message}, to=self._sid)

    async def close(self, code: int, reason: str) -> None:
        # Socket.IO has no close codes: the last envelope says why, then the server disconnects.
        log.info("socket.io %s closed by the server: %d %s", self._sid, code, reason)
        await self.send(closing_envelope(code, reason))
        # Disconnecting runs the disconnect handler, which finishes the session (and so cancels
        # the writer task calling this): let it run in a task of its own.
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
        self.inbox: asyncio.Queue[tuple[str | bytes, asyncio.Future[JsonObject | None]]] = (
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
            frame, answer = await self.inbox.get()
            await self.session.receive(frame, functools.partial(_settle, answer))

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


def identify(
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
            claims = verifier.verify(str(token))
        except ForbiddenOrigin as failure:
            log.info("socket.io connection refused: %s", failure)
            raise socketio.exceptions.ConnectionRefusedError(
                "Authentication failed: origin not allowed"
            ) from failure
        except AuthenticationFailed as failure:
            log.info("socket.io connection refused: %s", failure)
            raise socketio.exceptions.ConnectionRefusedError("Authentication failed") from failure
        return Identity(user_id=claims.subject, authenticated=True, claims=claims)
    named = environ.get("HTTP_USER_ID") or cookies.get("user_id")
    problem = id_problem(named) if named is not None else None
    if problem is not None:
        raise socketio.exceptions.ConnectionRefusedError(problem)
    return Identity(user_id=named or generated_user_id(), authenticated=False)


def create_server(app_state: Any, settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server; `app_state` is the FastAPI app's state (hub, verifier)."""
    sio = socketio.AsyncServer(
        async_mode="asgi",
        # Same origin unless PRODUCTFLO_ALLOWED_ORIGINS names the allowed ones.
        cors_allowed_origins=settings.allowed_origins or None,
        # Each event in a task of its own; `message` restores their order (the module docstring).
        async_handlers=True,
        ping_interval=settings.socketio_ping_interval,
        ping_timeout=settings.socketio_ping_timeout,
        logger=False,
        engineio_logger=False,
    )
    connections: dict[str, _Connection] = {}

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
            await sio.disconnect(sid)
            raise
        if isinstance(resume, ProtocolError):
            session.deliver(error_envelope(session.user_id, resume))

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        fields: dict[str, Any] = auth if isinstance(auth, dict) else {}
        identity = identify(settings, app_state.verifier, environ, fields)
        query = _query(environ)
        resume: Resume | ProtocolError | None
        try:
            resume = Resume.parse(
                fields.get("last_event_id", query.get("last_event_id")),
                fields.get("log_id", query.get("log_id")),
            )
        except ProtocolError as error:
            resume = error
        session = Session(app_state.hub, settings, identity, SocketIOTransport(sio, sid))
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
        if connection.inbox.qsize() >= INBOX_LIMIT:
            connection.session.request_close(CloseCode.POLICY_VIOLATION, "too many messages")
            return None
        frame = data if isinstance(data, str | bytes) else json.dumps(data)
        answer: asyncio.Future[JsonObject | None] = asyncio.get_running_loop().create_future()
        connection.unanswered.add(answer)
        connection.inbox.put_nowait((frame, answer))
        try:
            return await answer
        finally:
            connection.unanswered.discard(answer)

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


def asgi_app(sio: socketio.AsyncServer) -> ASGIApp:
    app: ASGIApp = socketio.ASGIApp(sio, socketio_path=PATH.strip("/"))
    return app
