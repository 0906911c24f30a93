"""Following the log from a position, every event once and in order.

A tailer is woken by LISTEN/NOTIFY and by this process's own commits (through the store's
`Recent`, recent.py), falls back to polling, and reads in batches. While it stands inside the
stretch of the log the process already holds (its own commits, and what any tailer read), it takes
its batches from there, without a round trip and without decoding them again; `Recent` makes the
one read that tailers at the end of the stretch need, and none when the head shows nothing new.
Behind the stretch (catching up from a checkpoint), it reads the log itself.
"""

from __future__ import annotations

import asyncio
import logging
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
        self.waiting = False  # caught up: waiting for a wake-up or the poll interval
        self._recent = store.recent
        self._unsubscribe = self._recent.subscribe(self._wake.set)

    def close(self) -> None:
        self._unsubscribe()

    async def batches(self) -> AsyncIterator[list[RecordedEvent]]:
        """Each batch continues exactly where the previous one ended."""
        while True:
            yield await self.next_batch()

    async def next_batch(self) -> list[RecordedEvent]:
        if self._rest_until:
            await asyncio.sleep(max(0.0, self._rest_until - asyncio.get_running_loop().time()))
            self._rest_until = 0.0
        polled = False
        while True:
            self._wake.clear()
            try:
                events = await self._read(confirm=polled)
            except StoreError:
                log.warning("tailer cannot read the log; retrying")
                events = []
            if events:
                return self._advance(events)
            # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that comes in the turn
            # the wake-up does, and the tailer's owner could never stop it.
            self.waiting = True
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
                polled = False
            except TimeoutError:
                polled = True
            finally:
                self.waiting = False

    async def _read(self, *, confirm: bool) -> list[RecordedEvent]:
        events = await self._recent.after(self.position, self._batch_size, confirm=confirm)
        if events is None:  # behind what the process holds: from the log
            events = await self._store.read(self.position, self._batch_size)
            self._recent.learn(events)
        return events

    def _advance(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        self.position = events[-1].position
        if self._fold and len(events) < self._batch_size:
            self._rest_until = asyncio.get_running_loop().time() + self._fold
        return events
