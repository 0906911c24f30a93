"""Following the log from a position, every event once and in order.

A tailer is woken by LISTEN/NOTIFY (through the store), falls back to polling, and reads in
batches. The events this process commits are offered to it as they commit, so that
they are followed without a round trip to the database and without decoding them again, but only
when they continue exactly where the tailer stands: positions have no holes (store.py), so `first
== position + 1` proves nothing was skipped. Anything else (another process committed in between)
is read from the log instead.
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
        fold: float = 0.0,
    ) -> None:
        self.position = after
        self._store = store
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        # Once caught up (a batch shorter than batch_size), wait this long before the next read,
        # so that the commits of the interval come as one batch; never while catching up.
        self._fold = fold
        self._rest_until = 0.0
        self._wake = asyncio.Event()
        self._offered: deque[list[RecordedEvent]] = deque()
        self._unsubscribe = [store.subscribe_wakeups(self._wake.set), store.on_commit(self.offer)]

    def offer(self, events: list[RecordedEvent]) -> None:
        """Hand over events just committed by this process (a shortcut, never a requirement)."""
        self._offered.append(events)
        self._wake.set()

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    async def batches(self) -> AsyncIterator[list[RecordedEvent]]:
        """Each batch continues exactly where the previous one ended."""
        while True:
            yield await self.next_batch()

    async def next_batch(self) -> list[RecordedEvent]:
        if self._rest_until:
            await asyncio.sleep(max(0.0, self._rest_until - asyncio.get_running_loop().time()))
            self._rest_until = 0.0
        while True:
            offered = self._take_offered()
            if offered:
                return self._advance(offered)
            self._wake.clear()
            try:
                events = await self._store.read(self.position, self._batch_size)
            except StoreError:
                log.warning("tailer cannot read the log; retrying")
                events = []
            if events:
                return self._advance(events)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    def _take_offered(self) -> list[RecordedEvent]:
        """The offered events that continue where the tailer stands, every offered batch that
        does (a folding tailer finds several), up to a batch."""
        taken: list[RecordedEvent] = []
        last = self.position
        while self._offered and len(taken) < self._batch_size:
            events = [e for e in self._offered[0] if e.position > last]
            if not events:
                self._offered.popleft()
                continue
            if events[0].position != last + 1:
                # A gap: someone else committed in between. The log has it all, in order.
                self._offered.clear()
                break
            room = self._batch_size - len(taken)
            taken.extend(events[:room])
            last = taken[-1].position
            if len(events) <= room:
                self._offered.popleft()
        return taken

    def _advance(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        self.position = events[-1].position
        if self._fold and len(events) < self._batch_size:
            self._rest_until = asyncio.get_running_loop().time() + self._fold
        return events
