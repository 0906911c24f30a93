"""Tests of the event log: appends, reads, tailing. Shared helpers for those tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg

from productflo.database import DatabaseUrl
from productflo.events.models import NewEvent, RecordedEvent
from productflo.events.store import NOTIFY_CHANNEL, EventStore, connect
from productflo.events.tailer import Tailer

T = TypeVar("T")

# No test here should come near this: it only turns a bug that hangs into a failure.
TIMEOUT = 20.0


@asynccontextmanager
async def running_store(url: DatabaseUrl) -> AsyncIterator[EventStore]:
    """An EventStore with its own connections, as one server process would have."""
    store = EventStore(url.dsn)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def database_named(server: DatabaseUrl, name: str) -> DatabaseUrl:
    """The URL of database `name` on the same server."""
    return server.with_database(name)


async def execute(url: DatabaseUrl, statement: str) -> None:
    """Run one statement on its own connection (CREATE DATABASE cannot run in a transaction)."""
    connection = await asyncpg.connect(url.dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def new_event(stream: str = "room:lobby", type: str = "chat", **data: Any) -> NewEvent:
    """An event to append; `data` defaults to a message naming nothing in particular."""
    return NewEvent(stream=stream, type=type, data=data or {"message": "hello"})


async def follow(tailer: Tailer, until: int) -> list[RecordedEvent]:
    """Every batch the tailer hands out until it reaches position `until`, concatenated."""
    seen: list[RecordedEvent] = []
    while tailer.position < until:
        batch = await tailer.next_batch()
        assert batch, "a tailer never returns an empty batch"
        seen.extend(batch)
    return seen


@contextmanager
def background(coroutine: Coroutine[Any, Any, T]) -> Iterator[asyncio.Task[T]]:
    """Run `coroutine` as a task during the block; cancel it if it is still running after."""
    task = asyncio.create_task(coroutine)
    try:
        yield task
    finally:
        task.cancel()


def positions(events: list[RecordedEvent]) -> list[int]:
    return [event.position for event in events]


async def wait_until_blocked_or_done(
    observer: asyncpg.Connection, tasks: Sequence[asyncio.Task[Any]], *, timeout: float = 10.0
) -> None:
    """Return once another session of this database waits on a lock, or all `tasks` are done.

    The second way out lets a test that expects writers to be blocked fail on what the blocked
    writers would have prevented (a reader skipping ahead), rather than on a timeout here.
    """
    async with asyncio.timeout(timeout):
        while not all(task.done() for task in tasks):
            waiting = await observer.fetchval(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock'
                """
            )
            if waiting:
                return
            await asyncio.sleep(0.02)


async def until_listening(store: EventStore, url: DatabaseUrl) -> None:
    """Return once a NOTIFY from another connection reaches the store's LISTEN connection."""
    woken = asyncio.Event()
    unsubscribe = store.subscribe_wakeups(woken.set)
    connection = await connect(url.dsn)
    try:
        async with asyncio.timeout(10):
            while not woken.is_set():
                await connection.execute("SELECT pg_notify($1, '0')", NOTIFY_CHANNEL)
                await asyncio.sleep(0.05)
    finally:
        unsubscribe()
        await connection.close()
