"""Notifications: what each user was told (mentions, documents ready), and what they have read."""

from __future__ import annotations

from collections.abc import Sequence

from productflo.events.models import RecordedEvent
from productflo.projections.framework import Connection

READ_TYPE = "notifications_read"


class Notifications:
    name = "notifications"
    tables: tuple[str, ...] = ("notifications",)

    def create(self, suffix: str) -> list[str]:
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
            f"CREATE INDEX ON notifications{suffix} (user_id, position)",
        ]

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        for event in events:
            user = event.addressee
            if user is None:
                continue
            if event.type == "notification":
                await connection.execute(
                    f"INSERT INTO notifications{suffix} (position, user_id, data, created_at) "
                    "VALUES ($1, $2, $3::jsonb, $4)",
                    event.position,
                    user,
                    event.data,
                    event.recorded_at,
                )
            elif event.type == READ_TYPE:
                await connection.execute(
                    f"UPDATE notifications{suffix} SET read_at = $3 "
                    "WHERE user_id = $1 AND position <= $2 AND read_at IS NULL",
                    user,
                    int(event.data["up_to"]),
                    event.recorded_at,
                )
