"""Message history: every event a room's members see, by room, as history pages read it."""

from __future__ import annotations

from collections.abc import Sequence

from productflo.audience import HISTORY_TYPES
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore, record
from productflo.jsontext import encode_text
from productflo.projections.framework import Connection, Projection, read_rows


class Messages(Projection):
    name = "messages"
    tables: tuple[str, ...] = ("messages",)

    def create(self, suffix: str) -> list[str]:
        return [
            f"""
            CREATE TABLE messages{suffix} (
                position    bigint      PRIMARY KEY,
                event_id    uuid        NOT NULL,
                room_id     text        NOT NULL,
                version     bigint      NOT NULL,
                type        text        NOT NULL,
                data        jsonb       NOT NULL,
                metadata    jsonb       NOT NULL,
                recorded_at timestamptz NOT NULL
            )
            """,
            f"CREATE INDEX ON messages{suffix} (room_id, position)",
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
        kept = [e for e in events if e.room_id is not None and e.type in HISTORY_TYPES]
        if not kept:
            return
        await connection.execute(
            f"""
            INSERT INTO messages{suffix}
                (position, event_id, room_id, version, type, data, metadata, recorded_at)
            SELECT p, i, r, v, t, d::jsonb, m::jsonb, a
            FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[],
                        $6::text[], $7::text[], $8::timestamptz[]) AS u(p, i, r, v, t, d, m, a)
            """,
            [e.position for e in kept],
            [e.event_id for e in kept],
            [e.room_id for e in kept],
            [e.version for e in kept],
            [e.type for e in kept],
            [encode_text(e.data) for e in kept],
            [encode_text(e.metadata) for e in kept],
            [e.recorded_at for e in kept],
        )
