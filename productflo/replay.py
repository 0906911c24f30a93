"""What a reconnecting user missed: the events after `last_event_id` they would have received.

Replay is the live path read from an older position. A session resuming attaches to the hub first
(so live events from position D on are buffered for it), then replays (last_event_id, D] from the
log, then flushes the buffer: no gap and no duplicate at the seam, because D is exactly where the
hub's dispatching stood when the session attached.

The window is read twice: first light columns only, to fold the user's membership along it and
find which positions they see (and, over PRODUCTFLO_REPLAY_LIMIT, keep only the newest); then the
chosen events in full, in chunks, as the client reads them (the next chunk read while this one is
sent). Memory is a list of positions and two chunks, however long the client was away.

Only what the connection may read is replayed (productflo.access): an anonymous connection naming
a user does not get that user's secure rooms, a token with a `rooms` claim only its rooms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from productflo.access import room_about
from productflo.audience import Visibility
from productflo.events.models import RecordedEvent, room_stream, user_stream
from productflo.events.store import EventStore
from productflo.membership import rooms_of

CHUNK = 1000

# Of the given rooms, those the connection may read.
Readable = Callable[[set[str]], Awaitable[set[str]]]


@dataclass(frozen=True)
class Missed:
    positions: list[int]
    truncated: bool


async def missed(
    store: EventStore,
    user_id: str,
    after: int,
    upto: int,
    limit: int,
    *,
    readable: Readable | None = None,
) -> Missed:
    """The positions in (after, upto] that `user_id` would have received, newest `limit` of them;
    with `readable`, only those about rooms it allows."""
    rooms = await rooms_of(store, user_id, after)
    streams = {room_stream(room) for room in rooms}
    streams |= await store.membership_streams(user_id, after, upto)
    streams.add(user_stream(user_id))
    outlines = await store.read_outlines(streams, after, upto)
    visibility = Visibility(user_id, rooms, await store.opened_docs(user_id, after))
    seen = [
        (o.position, room_about(o.stream, o.about))
        for o in outlines
        if visibility.sees(o.type, o.stream, o.actor, o.about)
    ]
    if readable is not None:
        allowed = await readable({room for _, room in seen if room is not None})
        seen = [(position, room) for position, room in seen if room is None or room in allowed]
    return Missed([position for position, _ in seen[-limit:]], truncated=len(seen) > limit)


async def chunks_at(
    store: EventStore, positions: list[int]
) -> AsyncGenerator[list[RecordedEvent], None]:
    """The events at `positions` (ascending), CHUNK at a time. The next chunk is read while the
    caller sends this one (PostgreSQL and the caller then work at once), never further ahead: a
    replay holds at most two chunks, however long the client was away."""
    starts = range(0, len(positions), CHUNK)
    if not starts:
        return

    def read(start: int) -> asyncio.Task[list[RecordedEvent]]:
        return asyncio.create_task(store.read_positions(positions[start : start + CHUNK]))

    ahead = read(starts[0])
    try:
        for following in [*starts[1:], None]:
            chunk = await ahead
            if following is not None:
                ahead = read(following)
            yield chunk
    finally:
        if not ahead.done():
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)
