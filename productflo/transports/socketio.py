"""Socket.IO at `/ws`: identify the client, then run the same Session as the native endpoint.

Only the framing differs: the client emits event `message` (an object or a JSON string), and the
server emits event `message` with `{"data": envelope}`. Requests reach this server only when they
carry `EIO=` (see `SocketIODispatch`); the rest of `/ws` is the native endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import socketio
from starlette.types import ASGIApp, Receive, Scope, Send

from productflo.auth import TokenVerifier, check_origin
from productflo.envelopes import error_envelope
from productflo.errors import AuthenticationFailed, ForbiddenOrigin, ProtocolError
from productflo.events.models import JsonObject
from productflo.session import Identity, Resume, Session
from productflo.settings import Settings
from productflo.transports.native import _ANONYMOUS_ID, generated_user_id

log = logging.getLogger(__name__)

PATH = "/ws"
OPEN_TIMEOUT = 10.0  # longest wait for the Socket.IO handshake to finish before the welcome


class SocketIOTransport:
    name = "socketio"

    def __init__(self, sio: socketio.AsyncServer, sid: str) -> None:
        self._sio = sio
        self._sid = sid
        self._closing: asyncio.Task[None] | None = None

    async def send(self, message: JsonObject) -> None:
        await self._sio.emit("message", {"data": message}, to=self._sid)

    async def close(self, code: int, reason: str) -> None:
        # Disconnecting runs the disconnect handler, which finishes the session (and so cancels
        # the writer task calling this): let it run in a task of its own.
        log.info("socket.io %s closed by the server: %d %s", self._sid, code, reason)
        self._closing = asyncio.create_task(self._sio.disconnect(self._sid))


class _Connection:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.opened: asyncio.Task[None] | None = None


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
    if named is not None and not _ANONYMOUS_ID.match(named):
        raise socketio.exceptions.ConnectionRefusedError("user_id is not a valid id")
    return Identity(user_id=named or generated_user_id(), authenticated=False)


def create_server(app_state: Any, settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server; `app_state` is the FastAPI app's state (hub, verifier)."""
    sio = socketio.AsyncServer(
        async_mode="asgi",
        # Same origin unless PRODUCTFLO_ALLOWED_ORIGINS names the allowed ones.
        cors_allowed_origins=settings.allowed_origins or None,
        # One connection's events in the order they came, as on the native endpoint.
        async_handlers=False,
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

    async def message(sid: str, data: Any = None) -> None:
        connection = connections.get(sid)
        if connection is None or connection.opened is None:
            return
        opened = connection.opened
        await asyncio.wait([opened])
        if opened.cancelled() or opened.exception() is not None:
            return  # the client went away, or open_session logged and disconnected
        frame = data if isinstance(data, str | bytes) else json.dumps(data)
        await connection.session.receive(frame)

    async def disconnect(sid: str, reason: Any = None) -> None:
        connection = connections.pop(sid, None)
        if connection is None:
            return
        if connection.opened is not None and not connection.opened.done():
            connection.opened.cancel()
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
