"""A room's past a page at a time, backwards: the `history` message and GET /rooms/{id}/messages.

Pages are read from the messages projection, and, for what the projection has not applied yet,
from the log itself: a message acknowledged a moment ago is in the next page already.
"""

from __future__ import annotations

from dataclasses import dataclass

from productflo.audience import HISTORY_TYPES
from productflo.envelopes import render_event
from productflo.events.checkpoints import checkpoint
from productflo.events.models import MAX_POSITION, JsonObject, room_stream
from productflo.events.store import EventStore
from productflo.projections.messages import Messages

_NEWEST = MAX_POSITION


@dataclass(frozen=True)
class Page:
    events: list[JsonObject]  # outbound envelopes, oldest first
    has_more: bool

    def as_json(self) -> JsonObject:
        return {"events": self.events, "has_more": self.has_more}


async def page(store: EventStore, room_id: str, before: int | None, limit: int) -> Page:
    """The room's `limit` newest visible events before `before` (an event id), oldest first."""
    before = before or _NEWEST
    applied = await checkpoint(store.pool, Messages.name)
    recent = await store.read_stream(
        room_stream(room_id), before=before, after=applied, limit=limit + 1, types=HISTORY_TYPES
    )
    if len(recent) <= limit:
        older = await Messages.page(store, room_id, min(before, applied + 1), limit + 1)
        recent = older + recent
    events = recent[-(limit + 1) :]
    rendered = [r.envelope for e in events[-limit:] if (r := render_event(e)) is not None]
    return Page(rendered, has_more=len(events) > limit)
