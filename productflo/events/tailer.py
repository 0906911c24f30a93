"""Following the log from a position, every event once and in order.

A tailer is woken by LISTEN/NOTIFY (through the store), falls back to polling, and reads in
batches. Events this process has just committed can be offered to it so that they are delivered
without a round trip to the database, but only when they continue exactly where the tailer stands:
positions have no holes (store.py), so `first == position + 1` proves nothing was skipped. Anything
else (another process committed in between) is read from the log instead.

Every commit notifies its new head, so while the store is listening a tailer that stands at the
head it knows of has nothing to read, and does not ask: a process's own commits, offered, would
otherwise cost the hub a read that comes back empty (two: one after the batch, one on its
NOTIFY). Whenever the store cannot vouch for its head (not listening yet, a reconnect), and at
least once per poll interval however often it is woken, the tailer reads as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from productflo.errors import StoreError
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore

log = logging.getLogger(__name__)


class Tailer:
    def __init__(
        self,
        store: EventStore,
        after: int,
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.5,
    ) -> None:
        self.position = after
        self._store = store
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._offered: deque[list[RecordedEvent]] = deque()
        self._next_poll = 0.0  # loop time of the next read the fallback owes; at once, first
        self._wakeups = store.wakeups
        self._unsubscribe = store.subscribe_wakeups(self._wake.set)

    def offer(self, events: list[RecordedEvent]) -> None:
        """Hand over events just committed by this process (a shortcut, never a requirement)."""
        self._offered.append(events)
        self._wake.set()

    def close(self) -> None:
        self._unsubscribe()

    async def batches(self) -> AsyncIterator[list[RecordedEvent]]:
        """Each batch continues exactly where the previous one ended."""
        while True:
            yield await self.next_batch()

    async def next_batch(self) -> list[RecordedEvent]:
        while True:
            offered = self._take_offered()
            if offered:
                return self._advance(offered)
            self._wake.clear()
            loop = asyncio.get_running_loop()
            if self._should_read(loop.time()):
                self._next_poll = loop.time() + self._poll_interval
                self._wakeups = self._store.wakeups
                try:
                    events = await self._store.read_following(self.position, self._batch_size)
                except StoreError:
                    log.warning("tailer cannot read the log; retrying")
                    events = []
                if events:
                    return self._advance(events)
            with contextlib.suppress(TimeoutError):
                wait = max(0.0, self._next_poll - loop.time())
                await asyncio.wait_for(self._wake.wait(), wait)

    def _should_read(self, now: float) -> bool:
        store = self._store
        unsure = not store.listening or store.wakeups != self._wakeups or now >= self._next_poll
        return unsure or store.known_head > self.position

    def _take_offered(self) -> list[RecordedEvent]:
        while self._offered:
            events = [e for e in self._offered.popleft() if e.position > self.position]
            if not events:
                continue
            if events[0].position == self.position + 1:
                return events
            # A gap: someone else committed in between. The log has it all, in order.
            self._offered.clear()
        return []

    def _advance(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        self.position = events[-1].position
        return events
