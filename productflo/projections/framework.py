"""Projections: read models folded from the log, each a `Transactional` consumer (its tables
and its checkpoint move in one transaction, productflo.consumers) that can be thrown away and
rebuilt.

A rebuild replays the whole log into fresh copies of the projection's tables (`<table>_rebuild`)
while the live ones keep serving, then, holding the checkpoint row so the live runner waits,
catches up with what arrived meanwhile and swaps the tables by renaming them. It applies each batch
with the same `apply` the live runner uses; the next batch is read while this one is applied, and
the keys and indexes only the model's readers need are built once the fresh tables are loaded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from productflo.consumers import Transactional, ensure_tables
from productflo.events.checkpoints import (
    Connection,
    checkpoint,
    head,
    lock_checkpoint,
    move_checkpoint,
)
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore, translated

__all__ = [
    "Connection",
    "Projection",
    "Status",
    "checkpoint",
    "ensure_tables",
    "json_rows",
    "read_rows",
    "rebuild",
    "rebuild_all",
    "status",
]

REBUILD = "_rebuild"
RETIRED = "_retired"
# Events per read of the log and per transaction of a rebuild. The next batch is decoded while
# this one is applied; past a few thousand events, the decoding of the next holds up the writing
# of this one's statements more than fewer round trips save (the messages rebuild over 100,000
# events: 118,000 events/s in batches of 2,000, 94,000 in batches of 5,000).
REBUILD_BATCH = 2000


class Projection(Transactional):
    """A read model: a transactional consumer with tables of its own, which something reads.

    Its DDL comes in two parts: the tables (with what `apply` itself relies on: the keys its
    upserts conflict on, the indexes its statements read by), and the keys and indexes only the
    model's readers need. A rebuild adds those last, once the fresh tables are loaded:
    PostgreSQL builds an index over a loaded table in a fraction of the time that keeping it up
    row by row takes."""

    def create(self, suffix: str) -> list[str]:
        return [*self.create_tables(suffix), *self.create_indexes(suffix)]

    def create_tables(self, suffix: str) -> list[str]:
        """DDL for the tables, each name followed by `suffix`."""
        return []

    def create_indexes(self, suffix: str) -> list[str]:
        """DDL for the keys and indexes `apply` does not rely on, of the tables named with
        `suffix`."""
        return []


@dataclass(frozen=True)
class Status:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return self.head - self.position


def json_rows(rows: Sequence[Sequence[object]]) -> str:
    """Rows for one of a projection's statements as a single JSON array of arrays, which the
    statement takes apart (`jsonb_array_elements($1::text::jsonb)`): one parameter instead of
    an array per column, which the driver checks and encodes element by element. JSON values
    (an event's data and metadata) go in as they are, ids as text, times in RFC 3339 to the
    microsecond."""
    try:
        return orjson.dumps(rows, default=_text, option=orjson.OPT_NAIVE_UTC).decode()
    except TypeError:
        # Integers past 64 bits, which orjson refuses: the standard library writes them, as
        # when the event was appended (productflo.jsontext.encode).
        return json.dumps(rows, default=_text, ensure_ascii=False, separators=(",", ":"))


def _text(value: object) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()
    raise TypeError(f"not a column value: {type(value).__name__}")


async def read_rows(store: EventStore, query: str, *args: Any) -> list[asyncpg.Record]:
    """A read of a projection's own tables (never the log's: ask the store for those), driver
    errors translated."""
    async with translated():
        return list(await store.pool.fetch(query, *args))


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
                for statement in projection.create_tables(REBUILD):
                    await connection.execute(statement)
        head = await store.head()
        position = 0
        applied = 0
        reading = _read(store, position, head)
        try:
            while reading is not None and (events := await reading):
                async with connection.transaction():
                    # The next batch is asked for once this one's statements are on their way:
                    # the driver then decodes it while PostgreSQL applies this one.
                    reading = _read(store, events[-1].position, head)
                    for projection in projections:
                        await projection.apply(connection, events, REBUILD)
                position = events[-1].position
                applied += len(events)
                progress(position, head)
        finally:
            await _cancel(reading)
        for projection in projections:
            for statement in projection.create_indexes(REBUILD):
                await connection.execute(statement)
        caught_up = [
            await _catch_up_and_swap(connection, store, projection, position)
            for projection in projections
        ]
    return applied + max(caught_up, default=0)


def _read(store: EventStore, after: int, head: int) -> asyncio.Task[list[RecordedEvent]] | None:
    """A read of the next batch up to `head` (positions are gapless: no read goes past it), in
    a task of its own, on a connection of the pool; None at the head."""
    if after >= head:
        return None
    return asyncio.ensure_future(store.read(after, min(REBUILD_BATCH, head - after)))


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """A read ahead must not outlive the rebuild that failed (or stopped) before taking it."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


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
