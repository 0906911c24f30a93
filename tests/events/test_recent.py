"""One read of each commit per process: tailers share what the process committed and read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from productflo.database import DatabaseUrl
from productflo.events.models import RecordedEvent
from productflo.events.recent import Recent
from productflo.events.store import EventStore
from productflo.events.tailer import Tailer
from tests.events import TIMEOUT, follow, new_event, positions, running_store, until_listening

pytestmark = pytest.mark.anyio


def count_log_reads(store: EventStore) -> list[int]:
    """Every read of the log after a position the store makes from here on, by `after`."""
    reads: list[int] = []
    fetch = store._fetch_from

    async def counted(pool: Any, query: str, *args: Any) -> Any:
        if "FROM events WHERE position > $1" in query:
            reads.append(args[0])
        return await fetch(pool, query, *args)

    store._fetch_from = counted  # type: ignore[method-assign]
    return reads


async def test_tailers_caught_up_read_nothing_for_their_own_process_commits(
    database_url: DatabaseUrl,
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await until_listening(store, database_url)
        reads = count_log_reads(store)
        tailers = [Tailer(store, 0, poll_interval=30) for _ in range(3)]
        for n in range(1, 21):
            await store.append([new_event(n=n)])
            for tailer in tailers:
                assert positions(await tailer.next_batch()) == [n]
        for tailer in tailers:
            tailer.close()
    # At most the one read that confirms, once LISTEN stands, that the head is what NOTIFY says.
    assert len(reads) <= 1, reads


async def test_another_process_commit_is_read_once_for_every_tailer(
    database_url: DatabaseUrl,
) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        running_store(database_url) as local,
        running_store(database_url) as other,
    ):
        await until_listening(local, database_url)
        tailers = [Tailer(local, 0, poll_interval=30) for _ in range(3)]
        await local.append([new_event(n=0)])
        for tailer in tailers:
            assert positions(await follow(tailer, until=1)) == [1]
        assert await local.recent.after(1, 10) == []  # the read that makes the head believed
        reads = count_log_reads(local)
        for n in range(2, 6):
            waiting = [asyncio.create_task(tailer.next_batch()) for tailer in tailers]
            await other.append([new_event(n=n)])
            assert [positions(await batch) for batch in waiting] == [[n]] * 3
        for tailer in tailers:
            tailer.close()
    assert reads == [1, 2, 3, 4], "each commit of another process: one read, shared"


# -- without a database ---------------------------------------------------------------------------


AT = datetime(2026, 12, 2, tzinfo=UTC)


def events(first: int, last: int) -> list[RecordedEvent]:
    return [
        RecordedEvent(position, new_event().event_id, "room:r", position, "chat", {}, {}, AT)
        for position in range(first, last + 1)
    ]


class Log:
    """A log of `head` events whose reads wait for `release` and are counted."""

    def __init__(self, head: int) -> None:
        self.head = head
        self.reads: list[int] = []
        self.release = asyncio.Event()

    async def read(self, after: int, limit: int) -> list[RecordedEvent]:
        self.reads.append(after)
        await self.release.wait()
        return events(after + 1, min(self.head, after + limit))


async def test_tailers_at_the_end_share_one_read_and_the_stretch_keeps_what_it_read() -> None:
    log = Log(head=3)
    recent = Recent(log.read, 0)
    recent.listening(True)
    asking = [asyncio.create_task(recent.after(0, 10)) for _ in range(3)]
    await asyncio.sleep(0)
    log.release.set()
    assert [positions(await task or []) for task in asking] == [[1, 2, 3]] * 3
    assert log.reads == [0], "three tailers, one read"
    assert positions(await recent.after(1, 10) or []) == [2, 3], "a tailer behind: from memory"
    assert await recent.after(3, 10) == [], "the head read is believed: no read"
    assert log.reads == [0]


async def test_a_commit_past_a_gap_moves_the_head_and_the_read_fills_the_gap() -> None:
    log = Log(head=5)
    log.release.set()
    recent = Recent(log.read, 2)
    recent.listening(True)
    assert positions(await recent.after(2, 10) or []) == [3, 4, 5]  # confirms the head
    log.head = 8
    recent.learn(events(8, 8))  # committed here after 6 and 7 came from elsewhere
    assert recent.end == 5 and recent.head == 8
    assert positions(await recent.after(5, 10) or []) == [6, 7, 8]
    assert log.reads == [2, 5]


async def test_until_a_read_confirms_the_head_after_listen_came_up_every_ask_reads() -> None:
    log = Log(head=0)
    log.release.set()
    recent = Recent(log.read, 0)
    assert await recent.after(0, 10) == []
    assert await recent.after(0, 10) == []
    assert log.reads == [0, 0], "not listening: the head proves nothing"
    recent.listening(True)
    assert await recent.after(0, 10) == []
    assert await recent.after(0, 10) == []
    assert log.reads == [0, 0, 0], "listening, and one read since: believed"
    recent.listening(False)
    assert await recent.after(0, 10) == []
    assert log.reads == [0, 0, 0, 0]
    assert await recent.after(0, 10, confirm=True) == []
    assert len(log.reads) == 5, "a poll reads regardless"


async def test_a_tailer_behind_the_kept_stretch_is_told_to_read_the_log_itself() -> None:
    log = Log(head=0)
    recent = Recent(log.read, 0, capacity=4)
    recent.learn(events(1, 9))  # more than twice the capacity: the oldest are let go
    assert recent.end == 9
    assert await recent.after(0, 10) is None
    assert positions(await recent.after(6, 10) or []) == [7, 8, 9]
    assert log.reads == []
