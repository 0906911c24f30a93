"""Room membership as the log tells it: the last join or leave of a user in each room wins.

Folded straight from the log's join/leave events (a partial index keeps that to a user's few
membership events); the rule of the fold itself is productflo.audience's.
"""

from __future__ import annotations

from productflo.audience import fold_membership
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore


def apply(rooms: set[str], event: RecordedEvent) -> None:
    """Fold one membership event into a user's set of rooms (idempotent, order-sensitive)."""
    fold_membership(rooms, event.type, event.room_id)


async def rooms_of(store: EventStore, user_id: str, upto: int) -> set[str]:
    """The rooms `user_id` belongs to as of log position `upto`."""
    last = await store.last_membership(user_id, upto)
    return {stream.removeprefix("room:") for stream, type_ in last.items() if type_ == "join"}
