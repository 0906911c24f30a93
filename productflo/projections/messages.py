"""Message history: every event a room's members see, by room, as history pages read it."""

from __future__ import annotations

from collections.abc import Sequence

from productflo.audience import HISTORY_TYPES
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore, record
from productflo.projections.framework import Connection, Projection, json_rows, read_rows


class Messages(Projection):
    name = "messages"
    tables: tuple[str, ...] = ("messages",)

    def create_tables(self, suffix: str) -> list[str]:
        return [
            f"""
            CREATE TABLE messages{suffix} (
                position    bigint      NOT NULL,
                event_id    uuid        NOT NULL,
                room_id     text        NOT NULL,
                version     bigint      NOT NULL,
                type        text        NOT NULL,
                data        jsonb       NOT NULL,
                metadata    jsonb       NOT NULL,
                recorded_at timestamptz NOT NULL
            )
            """,
        ]

    def create_indexes(self, suffix: str) -> list[str]:
        # `apply` only inserts: even the key can wait until a rebuild's table is loaded.
        return [
            f"ALTER TABLE messages{suffix} ADD PRIMARY KEY (position)",
            f"CREATE INDEX ON messages{suffix} (room_id, position)",  # history pages
        ]

    @staticmethod
    async def page(store: EventStore, room_id: str, before: int, limit: int) -> list[RecordedEvent]:
        """The room's newest `limit` events before `before`, oldest first."""
        rows = await read_rows(
            store,
            """
            SELECT position, event_id, 'room:' || room_id AS stream, version, type, data,
                   metadata, recorded_at
            FROM messages WHERE room_id = $1 AND position < $2
            ORDER BY position DESC LIMIT $3
            """,
            room_id,
            before,
            limit,
        )
        return [record(row) for row in reversed(rows)]

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        rows = [
            (e.position, e.event_id, room, e.version, e.type, e.data, e.metadata, e.recorded_at)
            for e in events
            if e.type in HISTORY_TYPES and (room := e.room_id) is not None
        ]
        if not rows:
            return
        # The batch as one JSON array of rows: one parameter instead of eight arrays, which the
        # driver would check and encode element by element (most of this method's time).
        await connection.execute(
            f"""
            INSERT INTO messages{suffix}
                (position, event_id, room_id, version, type, data, metadata, recorded_at)
            SELECT (r->>0)::bigint, (r->>1)::uuid, r->>2, (r->>3)::bigint, r->>4, r->5, r->6,
                   (r->>7)::timestamptz
            FROM jsonb_array_elements($1::text::jsonb) AS r
            """,
            json_rows(rows),
        )
