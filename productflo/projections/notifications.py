"""Notifications: what each user was told (mentions, documents ready), and what they have read.

How a user's events become their notifications is decided once, by `fold`, a pure function: the
projection folds each batch into the rows that batch can change, and GET /users/me/notifications
(productflo.notifications) folds the events the projection has not applied yet into the rows it
has. The two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from productflo.envelopes import iso
from productflo.events.models import MAX_POSITION, JsonObject, RecordedEvent
from productflo.events.store import EventStore
from productflo.jsontext import encode_text
from productflo.projections.framework import Connection, Projection, read_rows

NOTIFICATION_TYPE = "notification"
READ_TYPE = "notifications_read"
TYPES = (NOTIFICATION_TYPE, READ_TYPE)  # the events of a user's stream that `fold` looks at


@dataclass(frozen=True)
class Notification:
    position: int  # the notification event's position: its event_id
    data: JsonObject
    created_at: datetime
    read_at: datetime | None = None

    @property
    def room_id(self) -> str | None:
        """The room the notification is about, if any."""
        details = self.data.get("details")
        room = details.get("room_id") if isinstance(details, dict) else None
        return room if isinstance(room, str) else None

    def as_json(self) -> JsonObject:
        return {
            "event_id": self.position,
            **self.data,
            "created_at": iso(self.created_at),
            "read": self.read_at is not None,
        }


def read_up_to(event: RecordedEvent) -> int:
    """The position a `notifications_read` event marks read up to. Clamped to what a position
    can be: an `up_to` appended before HTTP bounded it must not stop the projection."""
    value = event.data.get("up_to")
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, min(value, MAX_POSITION))


def fold(
    notifications: Iterable[Notification], events: Iterable[RecordedEvent]
) -> list[Notification]:
    """One user's notifications after `events` of their stream (oldest first), newest first.

    A `notification` adds an unread notification; a `notifications_read` marks read, at its
    time, every unread notification at or below its `up_to` that exists when it comes. Other
    events change nothing."""
    by_position = {n.position: n for n in notifications}
    for event in events:
        if event.type == NOTIFICATION_TYPE:
            by_position.setdefault(
                event.position, Notification(event.position, event.data, event.recorded_at)
            )
        elif event.type == READ_TYPE:
            up_to = read_up_to(event)
            for position, notification in by_position.items():
                if notification.read_at is None and position <= up_to:
                    by_position[position] = replace(notification, read_at=event.recorded_at)
    return sorted(by_position.values(), key=lambda n: n.position, reverse=True)


def reach(events: Iterable[RecordedEvent]) -> int:
    """The highest position `fold` can change an existing notification at, given `events`: it
    changes none above, nor any already read (0: none at all)."""
    return max((read_up_to(e) for e in events if e.type == READ_TYPE), default=0)


def _notification(row: asyncpg.Record) -> Notification:
    return Notification(row["position"], row["data"], row["created_at"], row["read_at"])


class Notifications(Projection):
    name = "notifications"
    tables: tuple[str, ...] = ("notifications",)

    def create_tables(self, suffix: str) -> list[str]:
        return [
            f"""
            CREATE TABLE notifications{suffix} (
                position   bigint      PRIMARY KEY,
                user_id    text        NOT NULL,
                data       jsonb       NOT NULL,
                created_at timestamptz NOT NULL,
                read_at    timestamptz
            )
            """,
            # `apply` reads a user's unread notifications by it: not left for after a rebuild.
            f"CREATE INDEX ON notifications{suffix} (user_id, position)",
        ]

    @staticmethod
    async def page(
        store: EventStore, user_id: str, *, before: int, unread: bool, limit: int
    ) -> list[Notification]:
        """The user's newest `limit` notifications before `before`, newest first (`unread`:
        only those not read yet)."""
        rows = await read_rows(
            store,
            """
            SELECT position, data, created_at, read_at FROM notifications
            WHERE user_id = $1 AND position < $2 AND ($3 = false OR read_at IS NULL)
            ORDER BY position DESC LIMIT $4
            """,
            user_id,
            before,
            unread,
            limit,
        )
        return [_notification(row) for row in rows]

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        by_user: dict[str, list[RecordedEvent]] = {}
        for event in events:
            if event.type in TYPES and (user := event.addressee) is not None:
                by_user.setdefault(user, []).append(event)
        if not by_user:
            return
        # Load only what the batch can change (`reach`), fold, write back what changed.
        reaches = {user: up_to for user, mine in by_user.items() if (up_to := reach(mine)) > 0}
        loaded: dict[str, dict[int, Notification]] = {user: {} for user in by_user}
        if reaches:
            rows = await connection.fetch(
                f"""
                SELECT n.user_id, n.position, n.data, n.created_at, n.read_at
                FROM notifications{suffix} n
                JOIN unnest($1::text[], $2::bigint[]) AS r(user_id, up_to)
                  ON n.user_id = r.user_id
                WHERE n.read_at IS NULL AND n.position <= r.up_to
                """,
                list(reaches),
                list(reaches.values()),
            )
            for row in rows:
                loaded[row["user_id"]][row["position"]] = _notification(row)
        changed = [
            (user, notification)
            for user, mine in by_user.items()
            for notification in fold(loaded[user].values(), mine)
            if loaded[user].get(notification.position) != notification
        ]
        if changed:
            await _write(connection, suffix, changed)


async def _write(
    connection: Connection, suffix: str, changed: Sequence[tuple[str, Notification]]
) -> None:
    await connection.execute(
        f"""
        INSERT INTO notifications{suffix} (position, user_id, data, created_at, read_at)
        SELECT p, u, d::jsonb, c, r
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
            AS w(p, u, d, c, r)
        ON CONFLICT (position) DO UPDATE SET read_at = EXCLUDED.read_at
        """,
        [n.position for _, n in changed],
        [user for user, _ in changed],
        [encode_text(n.data) for _, n in changed],
        [n.created_at for _, n in changed],
        [n.read_at for _, n in changed],
    )
