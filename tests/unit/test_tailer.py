"""A tailer stops when it is told to, whatever else happens in the same turn of the event loop."""

from __future__ import annotations

import asyncio

import pytest

from productflo.events.tailer import Tailer
from tests.unit.memory import MemoryLog

pytestmark = pytest.mark.anyio

STEPS = 100  # turns of the event loop a tailer needs, at most, to reach its wait


async def test_a_tailer_woken_in_the_turn_it_is_cancelled_in_stops() -> None:
    """Python 3.11's `asyncio.wait_for` returns the result of what it waits for when that finishes
    in the same turn as the cancellation, and drops the cancellation: a tailer woken just as the
    hub stopped read on forever, and the lifespan's stop with it (a test run hung 2 h on it)."""
    log = MemoryLog()
    tailer = Tailer(log.as_store(), 0, poll_interval=3600)
    following = asyncio.create_task(tailer.next_batch())
    for _ in range(STEPS):  # until the tailer, having found nothing, waits to be woken
        await asyncio.sleep(0)
        if tailer.waiting:
            break
    assert tailer.waiting, "the tailer never came to wait for a wake-up"
    log.recent.listening(True)  # wakes every tailer (any wake-up would do) ...
    following.cancel()  # ... in the turn the tailer's owner stops it
    try:
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await following
    finally:
        following.cancel()
        tailer.close()
