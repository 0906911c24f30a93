"""Room membership as the log tells it: the last join or leave of a user in each room wins.

Until the projection framework keeps a table of it, membership is folded straight from the log's
join/leave events (a partial index keeps that to a user's few membership events).
"""

from __future__ import annotations

from productflo.envelopes import audience_of
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
    last = await store.last_membership(user_id, upto)
    return {stream.removeprefix("room:") for stream, type_ in last.items() if type_ == "join"}


class Visibility:
    """What one user sees of the log, event by event, as their membership changes along it.

    The same rule the hub applies live: room events reach the room's members (a joiner sees
    their own join, a leaver their own leave), user events reach that user.
    """

    def __init__(self, user_id: str, rooms: set[str]) -> None:
        self.user_id = user_id
        self.rooms = rooms

    def sees(self, type_: str, stream: str, actor: str | None) -> bool:
        kind, _, room = stream.partition(":")
        mine = kind == "room" and actor == self.user_id
        if mine and type_ == "join":
            self.rooms.add(room)
        audience = audience_of(type_, stream, actor)
        seen = audience is not None and (
            audience.name in self.rooms
            if audience.kind == "room"
            else audience.name == self.user_id
        )
        if mine and type_ == "leave":
            self.rooms.discard(room)
        return seen
