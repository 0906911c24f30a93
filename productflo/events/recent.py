"""The log's newest stretch in one process: each commit read once, shared by every tailer.

A process follows the log many times over: the hub, each projection's runner, the mentions handler
and the assistant each keep a tailer. Left alone, each would read every commit back from the
database on its own, and read once more, for nothing, after each commit's NOTIFY. `Recent` holds
the events at the end of the log this process knows of, as one contiguous stretch (positions have
no holes, store.py), so a tailer that stands inside it takes its next batch from memory:

- the process's own commits join the stretch as they commit, without a read;
- what any tailer reads from the log joins it too, when it continues the stretch;
- a tailer at the end of the stretch while the head is further makes one read for everyone
  (concurrent tailers wait on the same read);
- a tailer at the end of the stretch while the head is not further does not read at all.

The head is what NOTIFY says (each commit's notification carries the new head, migration 0003),
what this process committed and what it read. It is believed only while the LISTEN connection
stands, and only once a read begun after that connection came up has returned: anything committed
before the read began, the read saw; anything after, a notification will tell. Until then, and
whenever the store reports the connection lost, a tailer at the end reads as it always did. A
tailer's poll (its `poll_interval` with no wake-up) reads regardless: a check that costs one read
per interval, never a requirement.

A tailer behind the stretch (a consumer catching up from its checkpoint) reads the log itself,
and its reads join the stretch once they reach it.

Read from a hot standby (`retry_short`), a read may come back short of a head the primary's
NOTIFY already told: the standby has not replayed that far yet (it holds a prefix of the log,
never a stretch with holes). No notification will come for what is already told, so the tailers
are woken again `retry_short` seconds later, twice as long after each short read in a row (up to
RETRY_SHORT_MAX), until the stretch reaches the head.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from productflo.events.models import RecordedEvent

Reader = Callable[[int, int], Awaitable[list[RecordedEvent]]]  # (after, limit) -> events

CAPACITY = 4096  # events kept: a consumer folding 50 ms of a busy log finds them all here
READ_LIMIT = 1000
RETRY_SHORT_MAX = 0.05  # the longest wait before reading a standby that was behind again


class Recent:
    def __init__(
        self, read: Reader, end: int, *, capacity: int = CAPACITY, retry_short: float | None = None
    ) -> None:
        """`end`: the position the stretch starts after (the head when the process started)."""
        self._read = read
        self._retry_short = retry_short
        self._short_reads = 0  # reads in a row that came back short of the head
        self._capacity = capacity
        self._events: list[RecordedEvent] = []
        self.end = end  # the last position held (with no events held yet, where they start)
        self.head = end  # the newest committed position known to this process
        self._listening = False
        self._trusted = False  # the head is the log's: listening, and confirmed by a read since
        self._epoch = 0  # moves whenever the head stops being believed
        self._reading: asyncio.Task[None] | None = None
        self._wake: set[Callable[[], None]] = set()

    # -- what the store tells -------------------------------------------------------------------

    def learn(self, events: list[RecordedEvent]) -> None:
        """Events committed or read, contiguous and in order: those that continue the stretch
        join it; those further on only move the head (a read will fetch what lies between)."""
        if not events:
            return
        last = events[-1].position
        if last > self.head:
            self.head = last
        if last <= self.end:
            return
        first = events[0].position
        if first > self.end + 1:
            self._wake_all()  # a gap: the tailers at the end read it, once
            return
        self._events.extend(events[self.end + 1 - first :])
        self.end = last
        if len(self._events) > 2 * self._capacity:
            del self._events[: -self._capacity]
        self._wake_all()

    def notified(self, head: int) -> None:
        """A commit's NOTIFY, from any process."""
        if head > self.head:
            self.head = head
        if self.head > self.end:
            self._wake_all()

    def listening(self, up: bool) -> None:
        """The store's LISTEN connection came up or went down: either way, stop believing the
        head until a read confirms it."""
        self._listening = up
        self._trusted = False
        self._epoch += 1
        self._wake_all()

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    # -- what tailers ask -----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the stretch grows or the head moves past it; returns the
        unsubscribe function."""
        self._wake.add(callback)
        return lambda: self._wake.discard(callback)

    async def after(
        self, position: int, limit: int, *, confirm: bool = False
    ) -> list[RecordedEvent] | None:
        """Up to `limit` events after `position`: [] when there are none yet, None when
        `position` lies outside the stretch (the caller reads the log itself). `confirm` reads
        even when the head says there is nothing new."""
        while True:
            events = self._held_after(position, limit)
            if events is None or events:
                return events
            if self._trusted and self.head <= position and not confirm:
                return []
            await self._read_once()
            if self.end == position:
                return []
            confirm = False

    def _held_after(self, position: int, limit: int) -> list[RecordedEvent] | None:
        first = self.end - len(self._events) + 1
        if not first - 1 <= position <= self.end:
            return None
        start = position - first + 1
        return self._events[start : start + limit]

    async def _read_once(self) -> None:
        """The one read from the end of the stretch that every tailer there waits on."""
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_from_end(), name="productflo-recent")
            self._reading.add_done_callback(self._read_done)
        await asyncio.shield(self._reading)

    async def _read_from_end(self) -> None:
        epoch, listening = self._epoch, self._listening
        self.learn(await self._read(self.end, READ_LIMIT))
        if self._retry_short is not None and self.head > self.end:
            # A standby behind the head: what it replays next has no notification of its own.
            delay = min(self._retry_short * 2**self._short_reads, RETRY_SHORT_MAX)
            self._short_reads += 1
            asyncio.get_running_loop().call_later(delay, self._wake_all)
            return
        self._short_reads = 0
        if listening and epoch == self._epoch:
            self._trusted = True

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reading = None
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.exception()  # its waiters have it; nobody else should be told

    def _wake_all(self) -> None:
        for callback in list(self._wake):
            callback()
