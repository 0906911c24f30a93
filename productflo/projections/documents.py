"""Documents: each collaborative document of a room (SPEC section 7), with its title, version,
edit counts and periodic snapshots of its merged Yjs state.

The log holds a document's every update; this read model holds, per document, a snapshot of the
state merged from all of them up to `snapshot_through` (rewritten every SNAPSHOT_UPDATES updates,
not every batch: a state is the size of the document), and what changed since is read from the
log (`events_doc_updates`, migration 0009). So opening a document with a long history costs a
snapshot and at most a few hundred updates, and `current` is exact whatever the projection's lag.

The projection keeps the states it is folding in memory (a few, least recently used first out),
each tagged with the version (last update's position) it holds: another process applying a batch
of the same document moves the row's version, and then the state is loaded again.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from productflo.audience import DOC_UPDATE
from productflo.documents import State, title_of
from productflo.envelopes import iso
from productflo.events.checkpoints import checkpoint
from productflo.events.models import JsonObject, RecordedEvent, room_stream
from productflo.events.store import DOC_UPDATES, EventStore, doc_update
from productflo.projections.framework import Connection, Projection, json_rows, read_rows

SNAPSHOT_UPDATES = 1000  # updates since the last snapshot that make the next one
CACHED_STATES = 64


@dataclass
class _Folding:
    state: State
    version: int  # the position of the last update the state holds


@dataclass
class _Listed:
    title: str
    last: int  # the position of its last update
    updates: int
    updated_at: datetime


@dataclass(frozen=True)
class Document:
    """A document as a reader sees it: its state merged up to `through`."""

    room_id: str
    doc_id: str
    state: State
    version: int  # how many updates it has had (0: none yet)
    through: int  # every update up to this position is in `state`
    updated_at: datetime | None


class Documents(Projection):
    name = "documents"
    tables: tuple[str, ...] = ("documents",)

    def __init__(self) -> None:
        self._folding: dict[str, OrderedDict[tuple[str, str], _Folding]] = {}

    def create_tables(self, suffix: str) -> list[str]:
        return [
            f"""
            CREATE TABLE documents{suffix} (
                room_id          text        NOT NULL,
                doc_id           text        NOT NULL,
                title            text        NOT NULL,
                version          bigint      NOT NULL,
                updates          bigint      NOT NULL,
                created_by       text,
                created_at       timestamptz NOT NULL,
                updated_by       text,
                updated_at       timestamptz NOT NULL,
                -- NULL only in a row proposed to ON CONFLICT, which keeps the stored ones
                snapshot         bytea,
                snapshot_through bigint,
                snapshot_updates bigint,
                snapshot_at      timestamptz,
                PRIMARY KEY (room_id, doc_id)
            )
            """,
        ]

    # -- readers -------------------------------------------------------------------------------

    @staticmethod
    async def listed(store: EventStore, room_id: str) -> list[JsonObject]:
        """The room's documents, most recently edited first: the projection's rows and, for
        what it has not applied yet, the log (SPEC section 6: never behind what was delivered).
        `version` is a document's count of updates."""
        applied = await checkpoint(store.pool, Documents.name)
        # Read after the checkpoint: a row the projection moves meanwhile holds every update of
        # its document up to its `version`, so only the log's updates past that are added.
        tail = await store.doc_activity(room_id, applied)
        rows = await read_rows(
            store,
            "SELECT doc_id, title, version, updates, updated_at FROM documents WHERE room_id = $1",
            room_id,
        )
        found = {
            row["doc_id"]: _Listed(row["title"], row["version"], row["updates"], row["updated_at"])
            for row in rows
        }
        changed = set()
        for doc_id, position, recorded_at in tail:
            entry = found.setdefault(doc_id, _Listed("", 0, 0, recorded_at))
            if position > entry.last:
                entry.last, entry.updates, entry.updated_at = (
                    position,
                    entry.updates + 1,
                    recorded_at,
                )
                changed.add(doc_id)
        for doc_id in changed:  # their titles as they stand
            current = await Documents.current(store, room_id, doc_id, found[doc_id].last)
            found[doc_id].title = title_of(current.state.text)
        listed = sorted(found.items(), key=lambda item: (-item[1].updated_at.timestamp(), item[0]))
        return [
            {
                "doc_id": doc_id,
                "title": entry.title,
                "version": entry.updates,
                "updated_at": iso(entry.updated_at),
            }
            for doc_id, entry in listed
        ]

    @staticmethod
    async def current(store: EventStore, room_id: str, doc_id: str, upto: int) -> Document:
        """The document with every update up to `upto` (or further, as far as its snapshot
        goes): the snapshot, then the log after it."""
        rows = await read_rows(
            store,
            """
            SELECT created_at, snapshot, snapshot_through, snapshot_updates, snapshot_at
            FROM documents WHERE room_id = $1 AND doc_id = $2
            """,
            room_id,
            doc_id,
        )
        row = rows[0] if rows else None
        through = row["snapshot_through"] if row is not None else 0
        state = State(row["snapshot"] if row is not None else None)
        upto = max(upto, through)
        updates = await store.doc_updates(room_id, doc_id, through, upto)
        state.apply(u.update for u in updates)
        version = (row["snapshot_updates"] if row is not None else 0) + len(updates)
        updated_at = updates[-1].recorded_at if updates else None
        if updated_at is None and row is not None:
            updated_at = row["snapshot_at"]
        return Document(room_id, doc_id, state, version, upto, updated_at)

    # -- folding -------------------------------------------------------------------------------

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        batches: dict[tuple[str, str], list[RecordedEvent]] = {}
        for event in events:
            doc = event.data.get("doc_id")
            if event.type == DOC_UPDATE and (room := event.room_id) and isinstance(doc, str):
                batches.setdefault((room, doc), []).append(event)
        if not batches:
            return
        keys = sorted(batches)
        table = f"documents{suffix}"
        found = {
            (row["room_id"], row["doc_id"]): row
            for row in await connection.fetch(
                f"""
                SELECT d.room_id, d.doc_id, d.version, d.updates, d.snapshot, d.snapshot_through,
                       d.snapshot_updates
                FROM {table} d JOIN unnest($1::text[], $2::text[]) AS k(room_id, doc_id)
                  ON d.room_id = k.room_id AND d.doc_id = k.doc_id
                """,
                [room for room, _ in keys],
                [doc for _, doc in keys],
            )
        }
        folding = self._folding.setdefault(suffix, OrderedDict())
        rows = []
        for key in keys:
            updates = batches[key]
            row = found.get(key)
            held = folding.pop(key, None)
            version = row["version"] if row is not None else 0
            if held is None or held.version != version:
                held = _Folding(await _load(connection, key, row, updates[0].position), version)
            held.state.apply(base64.b64decode(e.data["update"]) for e in updates)
            held.version = updates[-1].position
            folding[key] = held
            while len(folding) > CACHED_STATES:
                folding.popitem(last=False)
            count = (row["updates"] if row is not None else 0) + len(updates)
            since = count - (row["snapshot_updates"] if row is not None else 0)
            snapshot = row is None or since >= SNAPSHOT_UPDATES
            first, last = updates[0], updates[-1]
            rows.append(
                (
                    *key,
                    title_of(held.state.text),
                    last.position,
                    count,
                    first.user_id,
                    first.recorded_at,
                    last.user_id,
                    last.recorded_at,
                    base64.b64encode(held.state.encoded).decode() if snapshot else None,
                    last.position if snapshot else None,
                    count if snapshot else None,
                    last.recorded_at if snapshot else None,
                )
            )
        await connection.execute(
            f"""
            INSERT INTO {table} AS d (room_id, doc_id, title, version, updates, created_by,
                created_at, updated_by, updated_at, snapshot, snapshot_through, snapshot_updates,
                snapshot_at)
            SELECT r->>0, r->>1, r->>2, (r->>3)::bigint, (r->>4)::bigint, r->>5,
                   (r->>6)::timestamptz, r->>7, (r->>8)::timestamptz,
                   decode(r->>9, 'base64'), (r->>10)::bigint, (r->>11)::bigint,
                   (r->>12)::timestamptz
            FROM jsonb_array_elements($1::text::jsonb) AS r
            ON CONFLICT (room_id, doc_id) DO UPDATE SET
                title = excluded.title,
                version = excluded.version,
                updates = excluded.updates,
                updated_by = excluded.updated_by,
                updated_at = excluded.updated_at,
                snapshot = coalesce(excluded.snapshot, d.snapshot),
                snapshot_through = coalesce(excluded.snapshot_through, d.snapshot_through),
                snapshot_updates = coalesce(excluded.snapshot_updates, d.snapshot_updates),
                snapshot_at = coalesce(excluded.snapshot_at, d.snapshot_at)
            """,
            json_rows(rows),
        )


async def state_before(connection: Connection, room_id: str, doc_id: str, before: int) -> State:
    """A document as it stood before position `before`: from the projection's snapshot when it
    is older than that (and the projection has a table), else from the document's first update."""
    try:
        rows = await connection.fetch(
            """
            SELECT snapshot, snapshot_through FROM documents
            WHERE room_id = $1 AND doc_id = $2 AND snapshot_through < $3
            """,
            room_id,
            doc_id,
            before,
        )
    except asyncpg.UndefinedTableError:  # the projection never ran on this database
        rows = []
    return await _load(connection, (room_id, doc_id), rows[0] if rows else None, before)


async def _load(
    connection: Connection, key: tuple[str, str], row: asyncpg.Record | None, before: int
) -> State:
    """A document's state from its snapshot and the log's updates after it, before `before`."""
    state = State(row["snapshot"] if row is not None else None)
    room, doc = key
    through = row["snapshot_through"] if row is not None else 0
    rows = await connection.fetch(DOC_UPDATES, room_stream(room), doc, through, before)
    state.apply(doc_update(r).update for r in rows)
    return state
