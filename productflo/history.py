"""A room's past a page at a time, backwards: the `history` message and GET /rooms/{id}/messages."""

from __future__ import annotations

from dataclasses import dataclass

from productflo.envelopes import HISTORY_TYPES, render_event
from productflo.events.models import JsonObject, room_stream
from productflo.events.store import EventStore


@dataclass(frozen=True)
class Page:
    events: list[JsonObject]  # outbound envelopes, oldest first
    has_more: bool

    def as_json(self) -> JsonObject:
        return {"events": self.events, "has_more": self.has_more}


async def page(store: EventStore, room_id: str, before: int | None, limit: int) -> Page:
    """The room's `limit` newest visible events before `before` (an event id), oldest first."""
    events = await store.read_stream(
        room_stream(room_id), before=before, limit=limit + 1, types=HISTORY_TYPES
    )
    rendered = [r.envelope for e in events[-limit:] if (r := render_event(e)) is not None]
    return Page(rendered, has_more=len(events) > limit)
