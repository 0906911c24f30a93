"""The ASGI application: the event store and the hub for the process's lifetime, and the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import State

from productflo import heap
from productflo.ai.providers import create_provider
from productflo.auth import TokenVerifier
from productflo.consumers import Consumer, Runner
from productflo.database import DatabaseUrl, resolve
from productflo.envelopes import AI_CODES, FIELD_RULES, InboundCode
from productflo.errors import CloseCode, StoreError
from productflo.events.store import EventStore
from productflo.handlers.assistant import Assistant
from productflo.handlers.mentions import Mentions
from productflo.hub import Hub
from productflo.jsontext import describe, safe_location
from productflo.metrics import bind_codes, exposition
from productflo.projections import PROJECTIONS
from productflo.settings import Settings
from productflo.transports import admin, http, native
from productflo.transports import socketio as socketio_transport

log = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"
# The page names its modules by path, not by version: a browser should ask again on each visit.
_NO_CACHE = {"Cache-Control": "no-cache"}


def create_app(settings: Settings, database: DatabaseUrl, *, owns_process: bool = False) -> FastAPI:
    """The app; `owns_process` when it is all its process serves (`productflo serve` and its
    workers, not a test), which lets it tune the garbage collector for the whole process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(app.state.verifier.aclose)
            await _start(stack, app.state, settings, database)
            if owns_process:
                heap.settle()
            log.info(
                "serving log %s from position %d", app.state.store.log_id, app.state.hub.dispatched
            )
            yield

    bind_codes(InboundCode, AI_CODES)
    app = FastAPI(title="ProductFlo realtime server", lifespan=lifespan)
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings)
    app.include_router(native.router)
    app.include_router(http.router)
    app.include_router(admin.router)
    if settings.socketio:
        # FastAPI stays outermost (its state, its lifespan): Socket.IO sits under it as a
        # middleware that takes /ws requests carrying EIO= and passes the rest on.
        sio = socketio_transport.create_server(app.state, settings)
        app.state.sio = sio
        app.add_middleware(
            socketio_transport.SocketIODispatch,
            socketio_app=socketio_transport.asgi_app(sio),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        """422 in our own words: where, what rule, and the error type the OpenAPI document
        promises; never the input, a pattern, a model name or a pydantic URL."""
        return JSONResponse({"detail": [_detail(item) for item in error.errors()]}, 422)

    @app.get("/", include_in_schema=False)
    async def web_client() -> FileResponse:
        """The browser client (docs/client.md): the page; its modules are under /static."""
        return FileResponse(_STATIC / "index.html", headers=_NO_CACHE)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(_STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=_STATIC), name="static")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready: the database answers, so messages can be acknowledged."""
        try:
            await app.state.store.ping()
        except StoreError:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ready", "database": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text: this process's series, or with --workers every worker's, summed."""
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


# Parameters whose whole rule is told, whatever way a value breaks it (jsontext.describe).
_HTTP_RULES = {
    "room_id": FIELD_RULES["room_id"],
    "since": "since must be an ISO 8601 date and time (e.g. 2026-11-26T12:00:00Z)",
    "until": "until must be an ISO 8601 date and time (e.g. 2026-11-26T12:00:00Z)",
}


def _detail(error: Mapping[str, object]) -> dict[str, object]:
    location = safe_location(error.get("loc"))
    # ("query", "limit") is told as "limit"; a lone ("body",) as itself.
    field = {**error, "loc": location[1:] if len(location) > 1 else location}
    error_type = error.get("type")
    return {
        "loc": location,
        "msg": describe(field, _HTTP_RULES),
        "type": error_type if isinstance(error_type, str) else "invalid",
    }


async def _start(
    stack: AsyncExitStack, state: State, settings: Settings, database: DatabaseUrl
) -> None:
    """Start the process's parts in order, each one's stop pushed onto `stack` just before it
    starts: leaving the stack stops them in the reverse order (sessions, consumers' runners, hub,
    store, provider), and a start that fails stops what had started, itself included (the store's
    pool opened, its first query refused). Every stop is a no-op for what did not start."""
    provider = create_provider(settings)  # a bad AI configuration stops the start, before any I/O
    stack.push_async_callback(provider.aclose)
    read = settings.database_read_url
    store = EventStore(
        database.dsn,
        read_dsn=DatabaseUrl.parse(read.get_secret_value()).dsn if read is not None else None,
    )
    stack.push_async_callback(store.close)
    await store.start()
    hub = Hub(store, poll_interval=settings.poll_interval)
    stack.push_async_callback(hub.stop)  # before the store's close: its tailer reads the store
    await hub.start()
    assistant = Assistant(store, hub, settings, provider)
    consumers: list[Consumer] = [*PROJECTIONS.values(), Mentions(store), assistant]
    for consumer in consumers:
        runner = Runner(store, consumer, settings.poll_interval)
        stack.push_async_callback(runner.stop)
        await runner.start()
    state.store, state.hub, state.assistant = store, hub, assistant
    stack.push_async_callback(_close_sessions, hub)


async def _close_sessions(hub: Hub) -> None:
    """Stop taking messages, commit what was accepted, then tell clients to come back; the rest
    stops only once every session has closed."""
    for session in hub.sessions:
        session.request_close(CloseCode.SERVICE_RESTART, "server restarting")
    for session in hub.sessions:
        await session.wait_closed()


def create_app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` and worker processes: settings from the environment."""
    settings = Settings()
    return create_app(settings, resolve(settings), owns_process=True)
