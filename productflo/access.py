"""Room access (SPEC section 5, "Rooms"): who may use a room, and who may read it.

The rules, in one place:

- A room is **secure** when the first event of its stream (version 1) came from an authenticated
  (/ws/secure) connection. The first user to use a room decides, once and for all; a room with no
  events yet is not secure.
- An anonymous (/ws) connection may neither use (join, leave, send, typing) nor read (history,
  live delivery, replay, the welcome's `rooms`) a secure room.
- A token with a `rooms` claim (room names, `*` matching any run of characters) may use and read
  only the rooms it names. A claim that is present but not a list of strings allows no room.
- An admin token may read (history, delivery) every room; what it may *use* is still limited by
  its `rooms` claim, if it has one.

Whether a room is secure is read from the rooms projection, or, for a room the projection has not
reached yet, from the first event of the room's stream (one probe of the (stream, version) unique
index). The answer never changes, so each process keeps it once known.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from typing import Protocol

from productflo.auth import Claims
from productflo.errors import ErrorCode, ProtocolError
from productflo.events.models import RecordedEvent, room_stream
from productflo.events.store import EventStore
from productflo.projections.rooms import Rooms


class Action(enum.StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    SEND = "send"  # chat and the AI codes
    TYPING = "typing"
    HISTORY = "history"


READS = frozenset({Action.HISTORY})


class Principal(Protocol):
    """Who is asking: a connection's identity, or an HTTP request's token."""

    @property
    def authenticated(self) -> bool: ...

    @property
    def claims(self) -> Claims | None: ...


@functools.lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def room_matches(pattern: str, room_id: str) -> bool:
    """`design-*` matches `design-a`; `*` is the only wildcard (`?` and `[` are literal)."""
    return _pattern(pattern).fullmatch(room_id) is not None


def claim_allows(claims: Claims | None, room_id: str) -> bool:
    """Whether the token's `rooms` claim (if any) names this room."""
    if claims is None or claims.raw.get("rooms") is None:
        return True
    patterns = claims.rooms  # None when the claim is not a list of strings: allows nothing
    return patterns is not None and any(room_matches(p, room_id) for p in patterns)


def refusal(principal: Principal, room_id: str, action: Action, secure: bool | None) -> str | None:
    """Why `principal` may not do `action` in the room, or None when it may.

    `secure` is the room's flag (None: not known); only anonymous principals need it.
    """
    claims = principal.claims if principal.authenticated else None
    if principal.authenticated:
        if action in READS and claims is not None and claims.is_admin:
            return None
        if not claim_allows(claims, room_id):
            return "Your token does not give access to this room"
        return None
    if secure is None or secure:
        return "This room is open only to authenticated (/ws/secure) connections"
    return None


def room_about(stream: str, about: object) -> str | None:
    """The room an event concerns: its stream's, or a user event's `data.details.room_id`."""
    kind, _, name = stream.partition(":")
    if kind == "room":
        return name
    return about if isinstance(about, str) else None


def event_room(event: RecordedEvent) -> str | None:
    """The room a recorded event concerns (a notification's room, for one in a user stream)."""
    details = event.data.get("details") if event.addressee is not None else None
    return room_about(event.stream, details.get("room_id") if isinstance(details, dict) else None)


class Access:
    """The room access rules of one process, with its cache of which rooms are secure."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._secure: dict[str, bool] = {}  # known for good
        # Rooms not known to have events to which this process has appends in flight: whether
        # the first of them came from an authenticated connection, and how many are in flight.
        # A check racing the first append is judged as that append will land.
        self._opening: dict[str, tuple[bool, int]] = {}

    # -- the secure flag -----------------------------------------------------------------------

    def known(self, room_id: str) -> bool | None:
        """The room's flag, if this process knows it."""
        return self._secure.get(room_id)

    def learn(self, room_id: str, secure: bool) -> None:
        """Record a room's flag (from its first event, dispatched by the hub)."""
        self._secure.setdefault(room_id, secure)
        self._opening.pop(room_id, None)

    def learn_from(self, event: RecordedEvent) -> None:
        """A room's first event tells whether it is secure."""
        if event.version == 1 and event.room_id is not None:
            self.learn(event.room_id, event.metadata.get("authenticated") is True)

    async def load(self, rooms: Iterable[str]) -> None:
        """Look up the rooms whose flag is not known yet (one query); StoreError if it fails."""
        unknown = sorted({room for room in rooms if room not in self._secure})
        if not unknown:
            return
        # The rooms projection's row, else the first event of the room's stream.
        flags = await Rooms.secure(self._store, unknown)
        if missing := [room_stream(room) for room in unknown if room not in flags]:
            opened = await self._store.first_authenticated(missing)
            flags.update({stream.removeprefix("room:"): first for stream, first in opened.items()})
        for room, secure in flags.items():
            self.learn(room, secure)

    async def is_secure(self, room_id: str) -> bool:
        """Whether the room is secure; a room with no events yet is not (unless this process is
        appending its first event from an authenticated connection right now)."""
        if room_id not in self._secure:
            await self.load([room_id])
        return self._flag(room_id)

    def _flag(self, room_id: str) -> bool:
        """The flag of a room known, or just looked up and found without events."""
        known = self._secure.get(room_id)
        if known is not None:
            return known
        opening = self._opening.get(room_id)
        return opening is not None and opening[0]

    def opening(self, room_id: str, authenticated: bool) -> None:
        """An append to the room is about to be submitted: if the room is new, it may open it.
        Call settled() once the append has committed (and been dispatched) or failed."""
        if room_id not in self._secure:
            first, pending = self._opening.get(room_id, (authenticated, 0))
            self._opening[room_id] = (first, pending + 1)

    def settled(self, room_id: str) -> None:
        entry = self._opening.get(room_id)
        if entry is None:
            return  # learned meanwhile
        first, pending = entry
        if pending <= 1:
            del self._opening[room_id]
        else:
            self._opening[room_id] = (first, pending - 1)

    # -- the rules -----------------------------------------------------------------------------

    async def check(
        self,
        principal: Principal,
        room_id: str,
        action: Action,
        *,
        client_msg_id: str | None = None,
    ) -> None:
        """Raise ProtocolError(FORBIDDEN) unless `principal` may do `action` in the room."""
        secure = None if principal.authenticated else await self.is_secure(room_id)
        reason = refusal(principal, room_id, action, secure)
        if reason is not None:
            raise ProtocolError(ErrorCode.FORBIDDEN, reason, client_msg_id=client_msg_id)

    def may_read(
        self, principal: Principal, room_id: str, *, looked_up: bool = False
    ) -> bool | None:
        """Whether the principal may receive the room's events. None when that depends on a
        flag this process does not know, unless the room was just `looked_up` by load() (and
        found without events: not secure)."""
        secure: bool | None = None
        if not principal.authenticated:
            secure = self._secure.get(room_id)
            if secure is None:
                if not looked_up:
                    return None
                secure = self._flag(room_id)
        return refusal(principal, room_id, Action.HISTORY, secure) is None

    async def readable(self, principal: Principal, rooms: Iterable[str]) -> set[str]:
        """The rooms among `rooms` the principal may read (unknown flags are looked up)."""
        rooms = set(rooms)
        if not principal.authenticated:
            await self.load(rooms)
        return {room for room in rooms if self.may_read(principal, room, looked_up=True)}
