"""Projections: named consumers of the log that keep tables of their own, and a checkpoint.

A projection applies a batch of events and moves its checkpoint in the same transaction, so each
event is applied exactly once: a crash in the middle rolls both back and the batch is applied
again from the unchanged checkpoint. Every server process runs every projection; they meet on the
checkpoint row (`SELECT ... FOR UPDATE`): whoever comes second finds the batch already applied
and skips it.

A rebuild replays the whole log into fresh copies of the projection's tables (`<table>_rebuild`)
while the live ones keep serving, then, holding the checkpoint row so the live runner waits,
catches up with what arrived meanwhile and swaps the tables by renaming them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from productflo.events.checkpoints import (
    Connection,
    checkpoint,
    create_checkpoint,
    head,
    lock_checkpoint,
    move_checkpoint,
)
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore, translated
from productflo.events.tailer import Tailer

__all__ = [
    "FOLD_SECONDS",
    "Connection",
    "Projection",
    "Runner",
    "Status",
    "apply_batch",
    "checkpoint",
    "ensure_tables",
    "read_rows",
    "rebuild",
    "rebuild_all",
    "status",
]

log = logging.getLogger(__name__)

REBUILD = "_rebuild"
RETIRED = "_retired"
REBUILD_BATCH = 5000


class Projection(Protocol):
    """A read model folded from the log."""

    name: str
    tables: tuple[str, ...]

    def create(self, suffix: str) -> list[str]:
        """DDL for this projection's tables, each name followed by `suffix`."""
        ...

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        """Fold events (in position order) into the tables named with `suffix`."""
        ...


@dataclass(frozen=True)
class Status:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return self.head - self.position


async def read_rows(store: EventStore, query: str, *args: Any) -> list[asyncpg.Record]:
    """A read of a projection's own tables (never the log's: ask the store for those), driver
    errors translated."""
    async with translated():
        return list(await store.pool.fetch(query, *args))


async def ensure_tables(connection: Connection, projection: Projection) -> None:
    """Create the live tables and the checkpoint row if this database has never had them."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", projection.name)
        if await create_checkpoint(connection, projection.name):
            for statement in projection.create(""):
                await connection.execute(statement)


async def apply_batch(
    connection: Connection, projection: Projection, events: Sequence[RecordedEvent]
) -> int:
    """Apply what of `events` is past the checkpoint, with the checkpoint; return the new one."""
    async with connection.transaction():
        position = await lock_checkpoint(connection, projection.name)
        fresh = [event for event in events if event.position > position]
        if fresh and fresh[0].position != position + 1:
            return position  # the checkpoint is behind this batch: read on from it instead
        if fresh:
            await projection.apply(connection, fresh, "")
            position = fresh[-1].position
            await move_checkpoint(connection, projection.name, position)
        return position


# Once caught up, a consumer reads the log at most this often (Tailer's `fold`). Woken by every
# commit, it would otherwise read and apply a few events per commit, a transaction and several
# round trips each time, and under moderate load that per-commit work dominates the server's CPU
# (bench/README.md). Waiting folds the commits of the interval into one batch; an idle log is
# still applied within the interval, and a consumer that is behind reads on without pausing.
FOLD_SECONDS = 0.05


class Runner:
    """Keeps one projection up with the log, live, for as long as the process runs."""

    def __init__(self, store: EventStore, projection: Projection, poll_interval: float) -> None:
        self.store = store
        self.projection = projection
        self._poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self.position = 0

    async def start(self) -> None:
        async with self.store.pool.acquire() as connection:
            await ensure_tables(connection, self.projection)
            self.position = await checkpoint(connection, self.projection.name)
        self._task = asyncio.create_task(self._run(), name=f"projection-{self.projection.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            tailer = Tailer(
                self.store, self.position, poll_interval=self._poll_interval, fold=FOLD_SECONDS
            )
            try:
                while True:
                    batch = await tailer.next_batch()
                    async with self.store.pool.acquire() as connection:
                        self.position = await apply_batch(connection, self.projection, batch)
                    # Another process may have applied further ahead (skip it), or the checkpoint
                    # may be behind what we read (read on from it): the checkpoint decides.
                    tailer.position = self.position
            except Exception:  # the database went away, or a batch failed: start over from the
                # checkpoint, which the failed transaction did not move
                log.warning("projection %s: retrying from its checkpoint", self.projection.name)
                await asyncio.sleep(self._poll_interval)
            finally:
                tailer.close()
            with contextlib.suppress(Exception):
                self.position = await checkpoint(self.store.pool, self.projection.name)


async def status(pool: asyncpg.Pool, names: Sequence[str]) -> list[Status]:
    position = await head(pool)
    return [Status(name, await checkpoint(pool, name), position) for name in names]


Progress = Callable[[int, int], None]  # (position reached, head when the rebuild started)


async def rebuild(store: EventStore, projection: Projection, progress: Progress) -> int:
    """Replay the whole log into fresh tables and swap them in; returns the events read."""
    return await rebuild_all(store, [projection], progress)


async def rebuild_all(
    store: EventStore, projections: Sequence[Projection], progress: Progress
) -> int:
    """Rebuild several projections in one pass over the log: each batch is read and decoded once
    and applied to every projection's fresh tables in one transaction. Then each catches up and
    is swapped in on its own, as `rebuild` does. Returns the events read."""
    pool = store.pool
    async with pool.acquire() as connection:
        for projection in projections:
            await ensure_tables(connection, projection)
            async with connection.transaction():
                for table in projection.tables:
                    await connection.execute(f"DROP TABLE IF EXISTS {table}{REBUILD}")
                for statement in projection.create(REBUILD):
                    await connection.execute(statement)
        head = await store.head()
        position = 0
        applied = 0
        while position < head:
            events = await store.read(position, REBUILD_BATCH)
            events = [event for event in events if event.position <= head]
            if not events:
                break
            async with connection.transaction():
                for projection in projections:
                    await projection.apply(connection, events, REBUILD)
            position = events[-1].position
            applied += len(events)
            progress(position, head)
        caught_up = [
            await _catch_up_and_swap(connection, store, projection, position)
            for projection in projections
        ]
    return applied + max(caught_up, default=0)


async def _catch_up_and_swap(
    connection: Connection, store: EventStore, projection: Projection, position: int
) -> int:
    """Hold the checkpoint (the live runner waits), apply what came meanwhile, rename, release."""
    applied = 0
    async with connection.transaction():
        await lock_checkpoint(connection, projection.name)
        while events := await store.read(position, REBUILD_BATCH):
            await projection.apply(connection, events, REBUILD)
            position = events[-1].position
            applied += len(events)
        for table in projection.tables:
            await connection.execute(f"ALTER TABLE {table} RENAME TO {table}{RETIRED}")
            await connection.execute(f"ALTER TABLE {table}{REBUILD} RENAME TO {table}")
            await connection.execute(f"DROP TABLE {table}{RETIRED}")
        await move_checkpoint(connection, projection.name, position)
    return applied
