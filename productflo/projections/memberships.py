"""Memberships: who is in which room now, one row per (user, room), for lookups by user."""

from __future__ import annotations

from collections.abc import Sequence

from productflo.events.models import RecordedEvent
from productflo.projections.framework import Connection


class Memberships:
    name = "memberships"
    tables: tuple[str, ...] = ("memberships",)

    def create(self, suffix: str) -> list[str]:
        return [
            f"""
            CREATE TABLE memberships{suffix} (
                user_id   text        NOT NULL,
                room_id   text        NOT NULL,
                position  bigint      NOT NULL,
                joined_at timestamptz NOT NULL,
                PRIMARY KEY (user_id, room_id)
            )
            """,
            f"CREATE INDEX ON memberships{suffix} (room_id)",
        ]

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        await apply_membership(connection, f"memberships{suffix}", events)


async def apply_membership(
    connection: Connection, table: str, events: Sequence[RecordedEvent]
) -> set[str]:
    """Fold joins and leaves into a (user_id, room_id, position, joined_at) table; returns the
    rooms whose membership the batch touched."""
    # Batch boundaries must not matter (a rebuild batches differently from live): per
    # (user, room), a leave in the batch resets the row; the first join after the last leave
    # (or, with no leave, the first join, if the user was not in already) is the row.
    touched: dict[tuple[str, str], list[RecordedEvent]] = {}
    for event in events:
        if event.type in ("join", "leave") and event.room_id and event.user_id:
            touched.setdefault((event.user_id, event.room_id), []).append(event)
    leaves: list[tuple[str, str]] = []
    joins: list[RecordedEvent] = []
    for key, ops in touched.items():
        since = [i for i, op in enumerate(ops) if op.type == "leave"]
        if since:
            leaves.append(key)
        rest = ops[since[-1] + 1 :] if since else ops
        if rest:
            joins.append(rest[0])
    if leaves:
        await connection.execute(
            f"""
            DELETE FROM {table} m
            USING unnest($1::text[], $2::text[]) AS u(user_id, room_id)
            WHERE m.user_id = u.user_id AND m.room_id = u.room_id
            """,
            [user for user, _ in leaves],
            [room for _, room in leaves],
        )
    if joins:
        await connection.execute(
            f"""
            INSERT INTO {table} (user_id, room_id, position, joined_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])
            ON CONFLICT (user_id, room_id) DO NOTHING
            """,
            [e.user_id for e in joins],
            [e.room_id for e in joins],
            [e.position for e in joins],
            [e.recorded_at for e in joins],
        )
    return {room for _, room in touched}
