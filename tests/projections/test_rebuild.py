"""Rebuilds: over many batches, read ahead, a rebuild gives the tables live application gives."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from productflo.consumers import apply_batch
from productflo.database import DatabaseUrl
from productflo.events.models import NewEvent, RecordedEvent
from productflo.events.store import EventStore
from productflo.projections import PROJECTIONS, framework
from productflo.projections.framework import (
    Connection,
    Projection,
    ensure_tables,
    rebuild,
    rebuild_all,
)
from productflo.projections.messages import Messages
from tests.events import TIMEOUT, running_store

pytestmark = pytest.mark.anyio

# Data a JSON round trip could get wrong: past 64 bits, floats, escapes, text beyond ASCII.
AWKWARD = {
    "message": 'design "note" \\ 1 é ☃ 𝄞 \n tab\t',
    "sender": "alice",
    "big": 2**70,
    "negative": -(2**65),
    "float": 0.1,
    "exponent": 1e300,  # PostgreSQL writes it back as 301 digits: an integer, read back
    "nested": {"list": [1, 2.5, None, True, {"deep": []}], "empty": {}},
}


def _event(stream: str, type_: str, user: str, data: dict[str, Any] | None = None) -> NewEvent:
    metadata = {"user_id": user, "transport": "websocket", "authenticated": user != "anon"}
    return NewEvent(stream, type_, data if data is not None else {}, metadata)


def _conversation() -> list[NewEvent]:
    """Rooms opened signed in and not, joins, leaves, rejoins, double joins, chats, answers,
    notifications and reads of them, a rejected frame: every kind of event each projection folds,
    spread so that batch boundaries fall everywhere."""
    design, ops = "room:design", "room:ops"
    events = [
        _event(design, "join", "alice"),
        _event(ops, "chat", "anon", {"message": "first in ops", "sender": "anon"}),
        _event(design, "join", "bob"),
        _event(design, "chat", "alice", AWKWARD),
    ]
    for n in range(12):
        events.append(_event(design, "chat", "bob", {"message": f"note {n}", "sender": "bob"}))
        events.append(_event(ops, "chat", "anon", {"message": f"ops {n}", "sender": "anon"}))
        if n % 4 == 0:
            events.append(_event("user:bob", "notification", "handler", {"details": {"n": n}}))
    events += [
        _event(design, "leave", "bob"),
        _event(design, "join", "carol"),
        _event(design, "join", "carol"),
        _event(design, "leave", "carol"),
        _event(design, "join", "bob"),
        _event(design, "haitch_chat", "alice", {"message": "summarize"}),
        _event(design, "haitch_chat_response", "assistant", {"message": "a summary"}),
        _event("user:alice", "haitch_chat_response", "assistant", {"details": {"room_id": "x"}}),
        _event("user:alice", "rejected", "alice", {"frame": "not json"}),
        _event("user:bob", "notifications_read", "bob", {"up_to": 20}),
        _event(design, "join", "carol"),
        _event(design, "leave", "carol"),
        _event("user:bob", "notification", "handler", {"details": {"room_id": "design"}}),
        _event("user:bob", "notifications_read", "bob", {"up_to": 10**30}),
        _event(ops, "leave", "anon"),
    ]
    return events


async def _snapshot(url: DatabaseUrl) -> dict[str, Any]:
    """Every row of every projection table, and each table's indexes, in a stable order."""
    connection = await asyncpg.connect(url.dsn)
    try:
        tables: dict[str, Any] = {}
        for projection in PROJECTIONS.values():
            for table in projection.tables:
                rows = await connection.fetch(f"SELECT * FROM {table}")
                tables[table] = sorted(tuple(str(v) for v in row.values()) for row in rows)
                indexes = await connection.fetch(
                    "SELECT regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') AS definition"
                    " FROM pg_indexes WHERE tablename = $1",
                    table,
                )
                tables[f"{table} indexes"] = sorted(row["definition"] for row in indexes)
        return tables
    finally:
        await connection.close()


async def _apply_live(store: EventStore, sizes: Sequence[int]) -> None:
    """Apply the whole log as the live runners do (each batch with its checkpoint), in batches
    of the given sizes, in turn."""
    events = await store.read(0, 10_000)
    async with store.pool.acquire() as connection:
        for projection in PROJECTIONS.values():
            await ensure_tables(connection, projection)
            start, turn = 0, 0
            while start < len(events):
                size = sizes[turn % len(sizes)]
                await apply_batch(connection, projection, events[start : start + size])
                start, turn = start + size, turn + 1


@pytest.mark.parametrize("passes", ["one pass per projection", "one pass for all"])
async def test_a_rebuild_over_many_batches_equals_live_application_for_every_projection(
    database_url: DatabaseUrl, monkeypatch: pytest.MonkeyPatch, passes: str
) -> None:
    """Live batches of 1 to 3 events; a rebuild in batches of 4, each read while the one before
    is applied: the same rows, the same indexes."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        for event in _conversation():  # one commit each, as separate clients would
            await store.append([event])
        await _apply_live(store, [1, 3, 2])
        live = await _snapshot(database_url)
        assert len(live["messages"]) > 30 and live["room_members"] and live["notifications"]

        monkeypatch.setattr(framework, "REBUILD_BATCH", 4)
        reached: list[int] = []
        head = await store.head()
        if passes == "one pass for all":
            applied = await rebuild_all(store, list(PROJECTIONS.values()), lambda p, h: None)
        else:
            for projection in PROJECTIONS.values():
                applied = await rebuild(store, projection, lambda p, h: reached.append(p))
            assert reached == [*range(4, head, 4), head] * len(PROJECTIONS)
        assert applied == head
        assert await _snapshot(database_url) == live


async def test_a_messages_row_is_the_event_as_the_log_holds_it(database_url: DatabaseUrl) -> None:
    """The rows go to PostgreSQL as one JSON document: nothing of the event may change on the
    way (integers past 64 bits, floats, escapes, ids, times to the microsecond)."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append(_conversation())
        await _apply_live(store, [5])
        logged = [e for e in await store.read(0, 10_000) if e.type == "chat"]
        paged = [
            e
            for room in ("design", "ops")
            for e in await Messages.page(store, room, before=10_000, limit=100)
            if e.type == "chat"
        ]
        assert sorted(paged) == logged
        awkward = [e.data for e in paged if "big" in e.data]
        assert awkward and {k: awkward[0][k] for k in AWKWARD if k != "exponent"} == {
            k: v for k, v in AWKWARD.items() if k != "exponent"
        }


class FailsLater(Messages):
    """Applies a first batch, then fails: a rebuild that stops with a read ahead under way."""

    name = "messages"

    def __init__(self) -> None:
        self.batches = 0

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        self.batches += 1
        if self.batches == 2:
            raise ConnectionResetError("the apply failed here")
        await super().apply(connection, events, suffix)


async def test_a_failed_rebuild_leaves_no_read_ahead_behind_and_the_live_tables_as_they_were(
    database_url: DatabaseUrl, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append(_conversation())
        await _apply_live(store, [7])
        live = await _snapshot(database_url)
        monkeypatch.setattr(framework, "REBUILD_BATCH", 5)
        before = asyncio.all_tasks()
        failing: Projection = FailsLater()
        with pytest.raises(ConnectionResetError):
            await rebuild(store, failing, lambda p, h: None)
        assert asyncio.all_tasks() == before, "no read of the log outlives the rebuild"
        assert await _snapshot(database_url) == live
