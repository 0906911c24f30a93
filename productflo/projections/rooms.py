"""Rooms: who opened each, whether from /ws/secure, how many members and messages, last activity.

The room access rules (a room first used from /ws/secure is closed to anonymous connections) read
`secure` from here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore
from productflo.projections.framework import Connection, Projection, read_rows

MESSAGE_TYPES = ("chat",)


class Rooms(Projection):
    name = "rooms"
    tables: tuple[str, ...] = ("rooms", "room_members")

    def create_tables(self, suffix: str) -> list[str]:
        return [
            f"""
            CREATE TABLE rooms{suffix} (
                room_id       text        PRIMARY KEY,
                created_by    text,
                created_at    timestamptz NOT NULL,
                secure        boolean     NOT NULL,
                member_count  integer     NOT NULL DEFAULT 0,
                message_count bigint      NOT NULL DEFAULT 0,
                last_activity timestamptz NOT NULL
            )
            """,
            f"""
            CREATE TABLE room_members{suffix} (
                user_id   text        NOT NULL,
                room_id   text        NOT NULL,
                position  bigint      NOT NULL,
                joined_at timestamptz NOT NULL,
                PRIMARY KEY (room_id, user_id)
            )
            """,
        ]

    @staticmethod
    async def secure(store: EventStore, rooms: Sequence[str]) -> dict[str, bool]:
        """Whether each of the rooms the projection has a row for is secure."""
        rows = await read_rows(
            store, "SELECT room_id, secure FROM rooms WHERE room_id = ANY($1::text[])", list(rooms)
        )
        return {row["room_id"]: row["secure"] for row in rows}

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        in_rooms = [e for e in events if e.room_id is not None]
        if not in_rooms:
            return
        # A room is opened by the first event of its stream (version 1), and is secure when
        # that event came from an authenticated connection.
        opened = [e for e in in_rooms if e.version == 1]
        if opened:
            await connection.execute(
                f"""
                INSERT INTO rooms{suffix} (room_id, created_by, created_at, secure, last_activity)
                SELECT r, u, a, s, a
                FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::boolean[])
                     AS x(r, u, a, s)
                ON CONFLICT (room_id) DO NOTHING
                """,
                [e.room_id for e in opened],
                [e.user_id for e in opened],
                [e.recorded_at for e in opened],
                [bool(e.metadata.get("authenticated")) for e in opened],
            )
        touched = await apply_membership(connection, f"room_members{suffix}", in_rooms)
        messages = Counter(e.room_id for e in in_rooms if e.type in MESSAGE_TYPES)
        latest: dict[str, datetime] = {e.room_id: e.recorded_at for e in in_rooms if e.room_id}
        rooms = sorted(latest)
        await connection.execute(
            f"""
            UPDATE rooms{suffix} AS r
            SET message_count = r.message_count + x.messages,
                last_activity = greatest(r.last_activity, x.latest),
                member_count = CASE WHEN x.touched THEN
                    (SELECT count(*) FROM room_members{suffix} m WHERE m.room_id = r.room_id)
                    ELSE r.member_count END
            FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::boolean[])
                 AS x(room_id, messages, latest, touched)
            WHERE r.room_id = x.room_id
            """,
            rooms,
            [messages.get(room, 0) for room in rooms],
            [latest[room] for room in rooms],
            [room in touched for room in rooms],
        )


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
