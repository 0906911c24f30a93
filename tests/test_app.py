"""The app's lifespan: what starts is stopped, in the reverse order, even when the start fails."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from productflo.app import create_app
from productflo.consumers import Runner
from productflo.database import DatabaseUrl
from productflo.events.store import EventStore
from productflo.hub import Hub
from productflo.settings import Settings

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
_roles = itertools.count()


def as_role(url: DatabaseUrl, role: str, password: str) -> DatabaseUrl:
    parts = urlsplit(url.dsn)
    host = parts.netloc.rpartition("@")[2]
    return DatabaseUrl(urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}")))


@pytest.fixture
async def reader(database_url: DatabaseUrl) -> AsyncIterator[DatabaseUrl]:
    """The test database as a user that may read every table and write none: the store and the
    hub start with it, the first projection runner (which writes its checkpoint) cannot."""
    role, password = f"productflo_reader_{os.getpid()}_{next(_roles)}", "reader-password"
    admin = await asyncpg.connect(database_url.dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        yield as_role(database_url, role, password)
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


async def sessions_left(database: DatabaseUrl, role: str | None = None) -> int:
    """Other sessions on the database (of `role`), once those on their way out are gone: a
    connection closed with `terminate()` (the store's listener) leaves a backend that exits a
    moment later."""
    observer = await asyncpg.connect(database.dsn)
    count = -1
    try:
        async with asyncio.timeout(TIMEOUT):
            while count != 0:
                count = await observer.fetchval(
                    """
                    SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid()
                      AND ($1::text IS NULL OR usename = $1)
                    """,
                    role,
                )
                if count:
                    await asyncio.sleep(0.02)
    except TimeoutError:
        pass
    finally:
        await observer.close()
    return count


class Lifecycle:
    """Which parts started and stopped, in order (the real methods run, only watched)."""

    PARTS = ((EventStore, "start", "close"), (Hub, "start", "stop"), (Runner, "start", "stop"))

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []
        for cls, start, stop in self.PARTS:
            monkeypatch.setattr(cls, start, self._watch(getattr(cls, start), self.started))
            monkeypatch.setattr(cls, stop, self._watch(getattr(cls, stop), self.stopped))

    @staticmethod
    def _watch(method: Any, calls: list[str]) -> Any:
        async def watched(part: Any) -> None:
            consumer = getattr(part, "consumer", None)
            calls.append(type(part).__name__ + (f" {consumer.name}" if consumer else ""))
            await method(part)

        return watched


@pytest.fixture
def lifecycle(monkeypatch: pytest.MonkeyPatch) -> Lifecycle:
    return Lifecycle(monkeypatch)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


async def test_a_start_that_fails_halfway_stops_what_had_started(
    settings: Settings,
    database_url: DatabaseUrl,
    reader: DatabaseUrl,
    lifecycle: Lifecycle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store (its pool, appender, listener) and the hub started; the first runner was
    refused: no task of theirs runs on and no connection of theirs is left open."""
    app = create_app(settings, reader)
    before = asyncio.all_tasks()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started with a user that may not write")
    assert lifecycle.started[:2] == ["EventStore", "Hub"]
    assert lifecycle.started[2].startswith("Runner") and len(lifecycle.started) == 3
    assert lifecycle.stopped == lifecycle.started[::-1]
    assert asyncio.all_tasks() - before == set()
    assert await sessions_left(database_url, urlsplit(reader.dsn).username) == 0
    assert warnings_of(caplog) == []


async def test_a_stop_runs_in_the_reverse_order_of_the_start(
    settings: Settings,
    database_url: DatabaseUrl,
    lifecycle: Lifecycle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hub, whose tailer reads the store, stops before the store; nothing is left running."""
    app = create_app(settings, database_url)
    before = asyncio.all_tasks()
    async with app.router.lifespan_context(app):
        assert lifecycle.started[-1] == "Runner handler:ai"
    assert lifecycle.stopped == lifecycle.started[::-1]
    assert asyncio.all_tasks() - before == set()
    assert await sessions_left(database_url) == 0
    assert warnings_of(caplog) == []
