"""Room membership as the log tells it: the last join or leave of a user in each room wins.

Until the projection framework keeps a table of it, membership is folded straight from the log's
join/leave events (a partial index keeps that to a user's few membership events).
"""

from __future__ import annotations

from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore

MEMBERSHIP_TYPES = ("join", "leave")


def apply(rooms: set[str], event: RecordedEvent) -> None:
    """Fold one membership event into a user's set of rooms (idempotent, order-sensitive)."""
    room = event.room_id
    if room is None:
        return
    if event.type == "join":
        rooms.add(room)
    elif event.type == "leave":
        rooms.discard(room)


async def rooms_of(store: EventStore, user_id: str, upto: int) -> set[str]:
    """The rooms `user_id` belongs to as of log position `upto`."""
    rows = await store.fetch(
        """
        SELECT DISTINCT ON (stream) stream, type FROM events
        WHERE metadata->>'user_id' = $1 AND type IN ('join', 'leave') AND position <= $2
        ORDER BY stream, position DESC
        """,
        user_id,
        upto,
    )
    return {row["stream"].removeprefix("room:") for row in rows if row["type"] == "join"}
