"""Who sees a stored event: the one rule that delivery, replay, history and projections share.

Pure: no I/O, no imports beyond the standard library. The hub asks it for every event it delivers
live, replay for every event of a user's window, history and the messages projection for which
types a room's page holds; a rule written twice is two rules that will drift apart.

- A room's events (`ROOM_TYPES` in a `room:` stream) reach the room's members. A joiner sees
  their own join, a leaver their own leave: membership changes *before* a join's audience is
  decided and *after* a leave's (`membership_change`).
- A user's events (`USER_TYPES` in a `user:` stream) reach that user.
- An AI request is acknowledged to its sender; its answer, a later event, goes to the room.
- Anything else (`rejected`, ...) reaches no one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Requests answered by the AI assistant, and the types of their stored answers.
REQUEST_TYPES = ("haitch_chat", "idea", "documentation", "engineering")
ANSWER_TYPES = tuple(f"{request}_response" for request in REQUEST_TYPES)
MEMBERSHIP_TYPES = ("join", "leave")

# Stored event types members of a room see (live, replayed, in history pages).
ROOM_TYPES = ("chat", *MEMBERSHIP_TYPES, *ANSWER_TYPES)
HISTORY_TYPES = ROOM_TYPES
# Stored event types a user's own stream delivers to them.
USER_TYPES = ("notification", *ANSWER_TYPES)


@dataclass(frozen=True)
class Audience:
    """Who sees an event: the members of a room, or one user."""

    kind: Literal["room", "user"]
    name: str


def audience_of(type_: str, stream: str, actor: str | None) -> Audience | None:
    """Who sees a stored event; None for events clients never see (`rejected`)."""
    kind, _, name = stream.partition(":")
    if kind == "room" and type_ in ROOM_TYPES:
        return Audience("room", name)
    if kind == "user" and type_ in USER_TYPES:
        return Audience("user", name)
    if type_ in REQUEST_TYPES and actor is not None:
        return Audience("user", actor)
    return None


def membership_change(type_: str) -> Literal["before", "after"] | None:
    """When a membership event changes its actor's rooms, relative to deciding its own audience:
    a join before (the joiner sees it), a leave after (so does the leaver)."""
    if type_ == "join":
        return "before"
    if type_ == "leave":
        return "after"
    return None


def fold_membership(rooms: set[str], type_: str, room: str | None) -> None:
    """Fold one of a user's membership events into their set of rooms (idempotent)."""
    if room is None:
        return
    if type_ == "join":
        rooms.add(room)
    elif type_ == "leave":
        rooms.discard(room)


def reaches(audience: Audience | None, user_id: str, rooms: set[str]) -> bool:
    """Whether the audience includes `user_id`, a member of `rooms`."""
    if audience is None:
        return False
    return audience.name in rooms if audience.kind == "room" else audience.name == user_id


class Visibility:
    """What one user sees of the log, event by event, as their membership changes along it
    (replay folds a user's window with it; the hub applies the same functions to everyone)."""

    def __init__(self, user_id: str, rooms: set[str]) -> None:
        self.user_id = user_id
        self.rooms = rooms

    def sees(self, type_: str, stream: str, actor: str | None) -> bool:
        kind, _, room = stream.partition(":")
        when = membership_change(type_) if kind == "room" and actor == self.user_id else None
        if when == "before":
            fold_membership(self.rooms, type_, room)
        seen = reaches(audience_of(type_, stream, actor), self.user_id, self.rooms)
        if when == "after":
            fold_membership(self.rooms, type_, room)
        return seen
