"""Native WebSocket: `/ws` (anonymous) and `/ws/secure` (JWT): identify, then run a Session."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from http.cookies import SimpleCookie

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from productflo import metrics
from productflo.auth import TokenVerifier, check_origin, find_token
from productflo.envelopes import error_envelope
from productflo.errors import (
    AuthenticationFailed,
    CloseCode,
    ErrorCode,
    ForbiddenOrigin,
    ProtocolError,
)
from productflo.hub import Hub
from productflo.identity import generated_user_id, id_problem
from productflo.outbox import Outgoing
from productflo.session import Identity, Resume, Session
from productflo.settings import Settings
from productflo.transports import wire

log = logging.getLogger(__name__)

router = APIRouter()


class NativeTransport:
    name = "websocket"

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        frames = websocket.scope.get("extensions", {}).get(wire.EXTENSION)
        self._write_frames = frames["write"] if frames else None

    async def send(self, messages: Sequence[Outgoing]) -> None:
        if self._write_frames is not None:  # one write, of frames built once for every recipient
            await self._write_frames([message.frame for message in messages])
            return
        for message in messages:  # another ASGI server: one websocket.send each
            await self._websocket.send_text(message.text)

    async def close(self, code: int, reason: str) -> None:
        if self._websocket.application_state is WebSocketState.CONNECTED:
            await self._websocket.close(code, reason)


def anonymous_identity(websocket: WebSocket) -> tuple[str | None, bool]:
    """The user id a /ws request names (query, header, cookie), and whether a cookie carried it."""
    for value, from_cookie in (
        (websocket.query_params.get("user_id"), False),
        (websocket.headers.get("user-id"), False),
        (websocket.cookies.get("user_id"), True),
    ):
        if value:
            return value, from_cookie
    return None, False


def user_id_cookie(user_id: str) -> tuple[bytes, bytes]:
    cookie: SimpleCookie = SimpleCookie()
    cookie["user_id"] = user_id
    cookie["user_id"]["path"] = "/"
    cookie["user_id"]["httponly"] = True
    cookie["user_id"]["samesite"] = "Lax"
    return b"set-cookie", cookie.output(header="").strip().encode("latin-1")


@router.websocket("/ws")
async def anonymous_endpoint(websocket: WebSocket) -> None:
    named, _ = anonymous_identity(websocket)
    problem = id_problem(named) if named is not None else None
    if named is not None and problem is not None:
        await websocket.accept()
        error = ProtocolError(ErrorCode.INVALID_MESSAGE, problem)
        await websocket.send_text(json.dumps(error_envelope(named[:128], error)))
        metrics.count_close(CloseCode.POLICY_VIOLATION)
        await websocket.close(CloseCode.POLICY_VIOLATION, "invalid user_id")
        return
    user_id = named or generated_user_id()
    headers = [] if "user_id" in websocket.cookies else [user_id_cookie(user_id)]
    await websocket.accept(headers=headers)
    await serve_session(websocket, Identity(user_id=user_id, authenticated=False))


@router.websocket("/ws/secure")
async def secure_endpoint(websocket: WebSocket) -> None:
    settings: Settings = websocket.app.state.settings
    verifier: TokenVerifier = websocket.app.state.verifier
    try:
        found = find_token(websocket.query_params, websocket.cookies, websocket.headers)
        if found.from_cookie:
            check_origin(settings, websocket.headers.get("origin"), websocket.headers.get("host"))
        claims = await verifier.verify_async(found.token)
    except AuthenticationFailed as failure:
        log.info("secure connection refused: %s", failure)
        code = (
            CloseCode.FORBIDDEN_ORIGIN
            if isinstance(failure, ForbiddenOrigin)
            else CloseCode.AUTHENTICATION_FAILED
        )
        await websocket.accept()
        error = ProtocolError(ErrorCode.AUTHENTICATION_FAILED, "Authentication failed")
        await websocket.send_text(json.dumps(error_envelope(None, error)))
        metrics.count_close(code)
        await websocket.close(code, "authentication failed")
        return
    await websocket.accept()
    identity = Identity(user_id=claims.subject, authenticated=True, claims=claims)
    await serve_session(websocket, identity)


async def serve_session(websocket: WebSocket, identity: Identity) -> None:
    """Run a session over an accepted socket until either side ends it."""
    hub: Hub = websocket.app.state.hub
    settings = websocket.app.state.settings
    transport = NativeTransport(websocket)
    session = Session(hub, hub.store, hub.access, settings, identity, transport)
    query = websocket.query_params
    refusal: ProtocolError | None = None
    try:
        resume = Resume.parse(query.get("last_event_id"), query.get("log_id"))
    except ProtocolError as error:
        resume, refusal = None, error
    try:
        await session.open(resume)
    except Exception:
        log.exception("could not open a session for %s", identity.user_id)
        metrics.count_close(CloseCode.INTERNAL_ERROR)
        await websocket.close(CloseCode.INTERNAL_ERROR, "internal error")
        return
    if refusal is not None:
        session.deliver(error_envelope(identity.user_id, refusal))
    shutdown = websocket.scope.get("extensions", {}).get(wire.SHUTDOWN)
    if shutdown is not None:  # the server stopping: acknowledge what was taken, then close 1012
        shutdown["register"](
            lambda: session.request_close(CloseCode.SERVICE_RESTART, "server restarting")
        )
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            await session.receive(frame)
            if session.state is not session.state.OPEN:
                await session.wait_closed()
                break
    except WebSocketDisconnect:
        pass
    finally:
        await session.finish()
