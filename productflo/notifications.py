"""A user's notifications, newest first: GET /users/me/notifications.

Read from the notifications projection up to its checkpoint and, for what it has not applied
yet, from the user's stream in the log, folded by the projection's own rule
(`projections.notifications.fold`): a notification delivered a moment ago is listed, and one
marked read a moment ago is listed as read (SPEC section 6: read models are never behind what was
delivered). Room history does the same with the messages projection (productflo.history).
"""

from __future__ import annotations

from productflo.events.checkpoints import checkpoint
from productflo.events.models import RecordedEvent, user_stream
from productflo.events.store import EventStore
from productflo.projections.notifications import TYPES, Notification, Notifications, fold

_TAIL_PAGE = 1000  # events of the user's stream read at a time past the projection's checkpoint


async def listing(
    store: EventStore, user_id: str, *, unread: bool, limit: int
) -> list[Notification]:
    """The user's newest `limit` notifications (`unread`: only those not read yet)."""
    applied = await checkpoint(store.pool, Notifications.name)
    # Read after the checkpoint: a row the projection applies meanwhile is past it (and left
    # out of the pages below), a read it applies meanwhile is folded again, which changes nothing.
    tail = await _unapplied(store, user_id, applied)
    rows: list[Notification] = []
    before, size = applied + 1, limit
    while True:
        more = await Notifications.page(store, user_id, before=before, unread=unread, limit=size)
        rows += more
        listed = [n for n in fold(rows, tail) if not unread or n.read_at is None]
        if len(listed) >= limit or len(more) < size:
            return listed[:limit]
        # The tail has read some of the rows asked for as unread: ask for more, twice as many
        # each time, until enough are left or the projection has no more.
        before, size = more[-1].position, size * 2


async def _unapplied(store: EventStore, user_id: str, applied: int) -> list[RecordedEvent]:
    """Every event of the user's stream past `applied` that `fold` looks at, oldest first."""
    events: list[RecordedEvent] = []
    before: int | None = None
    while True:
        page = await store.read_stream(
            user_stream(user_id), before=before, after=applied, limit=_TAIL_PAGE, types=TYPES
        )
        events = page + events
        if len(page) < _TAIL_PAGE:
            return events
        before = page[0].position
