"""Who sees a stored event: the one rule that delivery, replay, history and projections share.

Pure: no I/O, no imports beyond the standard library. The hub asks it for every event it delivers
live, replay for every event of a user's window, history and the messages projection for which
types a room's page holds; a rule written twice is two rules that will drift apart.

- A room's events (`ROOM_TYPES` in a `room:` stream) reach the room's members. A joiner sees
  their own join, a leaver their own leave: membership changes *before* a join's audience is
  decided and *after* a leave's (`membership_change`).
- A user's events (`USER_TYPES` in a `user:` stream) reach that user.
- A document's updates (`doc_update`) reach the members of its room who opened it (`doc_open`,
  which reaches no one: its answer, `doc_sync`, is the opener's alone). Opening is folded like
  membership: a user who opened a document receives its updates on every connection, from then
  on, live and replayed (`fold_opened`).
- An AI request is acknowledged to its sender; its answer, a later event, goes to the room.
- Anything else (`rejected`, ...) reaches no one.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Literal

# Requests answered by the AI assistant, and the types of their stored answers.
REQUEST_TYPES = ("haitch_chat", "idea", "documentation", "engineering")
ANSWER_TYPES = tuple(f"{request}_response" for request in REQUEST_TYPES)
MEMBERSHIP_TYPES = ("join", "leave")
DOC_OPEN = "doc_open"
DOC_UPDATE = "doc_update"

# Stored event types members of a room see (live, replayed, in history pages).
ROOM_TYPES = ("chat", *MEMBERSHIP_TYPES, *ANSWER_TYPES)
HISTORY_TYPES = ROOM_TYPES
# Stored event types a user's own stream delivers to them.
USER_TYPES = ("notification", *ANSWER_TYPES)


# A document: its room and its id.
Opened = tuple[str, str]


@dataclass(frozen=True)
class Audience:
    """Who sees an event: the members of a room (with `doc`, those of them who opened that
    document of the room), or one user."""

    kind: Literal["room", "user"]
    name: str
    doc: str | None = None


def audience_of(type_: str, stream: str, actor: str | None, doc: object = None) -> Audience | None:
    """Who sees a stored event; None for events clients never see (`rejected`). `doc` is a
    document event's `data.doc_id`."""
    kind, _, name = stream.partition(":")
    if kind == "room" and type_ in ROOM_TYPES:
        return Audience("room", name)
    if kind == "room" and type_ == DOC_UPDATE and isinstance(doc, str):
        return Audience("room", name, doc)
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


def fold_opened(opened: set[Opened], type_: str, room: str | None, doc: object) -> None:
    """Fold one of a user's events into the set of documents they opened."""
    if type_ == DOC_OPEN and room is not None and isinstance(doc, str):
        opened.add((room, doc))


def reaches(
    audience: Audience | None,
    user_id: str,
    rooms: set[str],
    opened: AbstractSet[Opened] = frozenset(),
) -> bool:
    """Whether the audience includes `user_id`, a member of `rooms` who opened `opened`."""
    if audience is None:
        return False
    if audience.kind == "user":
        return audience.name == user_id
    if audience.doc is not None and (audience.name, audience.doc) not in opened:
        return False
    return audience.name in rooms


class Visibility:
    """What one user sees of the log, event by event, as their membership changes along it
    (replay folds a user's window with it; the hub applies the same functions to everyone)."""

    def __init__(self, user_id: str, rooms: set[str], opened: set[Opened] | None = None) -> None:
        self.user_id = user_id
        self.rooms = rooms
        self.opened = opened if opened is not None else set()

    def sees(self, type_: str, stream: str, actor: str | None, doc: object = None) -> bool:
        kind, _, room = stream.partition(":")
        mine = kind == "room" and actor == self.user_id
        when = membership_change(type_) if mine else None
        if when == "before":
            fold_membership(self.rooms, type_, room)
        if mine:
            fold_opened(self.opened, type_, room, doc)
        audience = audience_of(type_, stream, actor, doc)
        seen = reaches(audience, self.user_id, self.rooms, self.opened)
        if when == "after":
            fold_membership(self.rooms, type_, room)
        return seen
