"""Real PostgreSQL and real servers on 127.0.0.1 for every test.

The database is `PRODUCTFLO_TEST_DATABASE_URL` when given (any PostgreSQL 14+ server where the
user may create databases), else an embedded PostgreSQL started for the test session in a
temporary directory. The schema is migrated once into a template; each test gets a fresh copy.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn

from productflo import migrate
from productflo.app import create_app
from productflo.cli import websocket_options
from productflo.database import DatabaseUrl, start_embedded
from productflo.settings import Settings
from tests import asyncapi
from tests.client import Client


def pytest_configure(config: pytest.Config) -> None:
    # Every envelope the test clients send and receive is held to docs/asyncapi.yaml.
    config.pluginmanager.register(asyncapi, "asyncapi")


TEMPLATE = "productflo_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_root() -> Iterator[DatabaseUrl]:
    """A server, as the URL of its maintenance database."""
    given = os.environ.get("PRODUCTFLO_TEST_DATABASE_URL")
    if given:
        yield DatabaseUrl.parse(given)
        return
    with tempfile.TemporaryDirectory(prefix="productflo-test-") as directory:
        embedded = start_embedded(Settings(data_dir=Path(directory), database_url=None))
        try:
            yield embedded.url
        finally:
            embedded.stop()


def _with_database(url: DatabaseUrl, name: str) -> DatabaseUrl:

    return url.with_database(name)


async def _admin(root: DatabaseUrl, *statements: str) -> None:
    connection = await asyncpg.connect(root.dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_database(postgres_root: DatabaseUrl) -> DatabaseUrl:
    asyncio.run(
        _admin(
            postgres_root,
            f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE}",
        )
    )
    url = _with_database(postgres_root, TEMPLATE)
    migrate.upgrade(url)
    return url


@pytest.fixture
def database_url(
    postgres_root: DatabaseUrl, template_database: DatabaseUrl
) -> Iterator[DatabaseUrl]:
    """A freshly migrated database of this test's own."""
    name = f"productflo_test_{os.getpid()}_{next(_counter)}"
    asyncio.run(_admin(postgres_root, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    yield _with_database(postgres_root, name)
    asyncio.run(_admin(postgres_root, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def settings(tmp_path: Path, database_url: DatabaseUrl) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url.dsn,
        jwt_secret="test-secret-at-least-32-bytes-long!!",
        poll_interval=0.2,
        socketio_ping_interval=1.0,
        socketio_ping_timeout=2.0,
    )


class ServerThread:
    """A real uvicorn server on 127.0.0.1, on a port of its own, in a thread with its own loop."""

    def __init__(self, settings: Settings, database: DatabaseUrl, ws: str | None = None) -> None:
        self.settings = settings
        self.database = database
        options = websocket_options(settings)
        if ws is not None:  # another of uvicorn's WebSocket protocols than the server's own
            options["ws"] = ws
        config = uvicorn.Config(
            create_app(settings, database),
            host="127.0.0.1",
            port=0,
            **options,  # type: ignore[arg-type]
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            threading.Event().wait(0.01)
        sock = self.server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def app_state(self) -> Any:
        return self.server.config.app.state  # type: ignore[union-attr]


@pytest.fixture
def start_server(settings: Settings, database_url: DatabaseUrl) -> Iterator[Any]:
    """`start_server(ws=None, database=None, **setting_overrides)`: another real server on this
    test's database, or on `database` (`ws`: another uvicorn WebSocket protocol than the
    server's own)."""
    running: list[ServerThread] = []

    def start(
        ws: str | None = None, database: DatabaseUrl | None = None, **overrides: Any
    ) -> ServerThread:
        on = database if database is not None else database_url
        server = ServerThread(settings.model_copy(update=overrides), on, ws)
        server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def server(start_server: Any) -> ServerThread:
    server: ServerThread = start_server()
    return server


@pytest.fixture
def connect(server: ServerThread, connect_to: Any) -> Any:
    """`await connect(path, **options)` opens a Client that is closed after the test."""

    async def open_client(path: str = "/ws", **options: Any) -> Client:
        client: Client = await connect_to(server, path, **options)
        return client

    return open_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def connect_to() -> AsyncIterator[Any]:
    """`await connect_to(server, path)`: `connect` for a server started with `start_server`."""
    clients: list[Client] = []

    async def open_client(target: ServerThread, path: str = "/ws", **options: Any) -> Client:
        client = await Client.open(target.ws + path, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()
