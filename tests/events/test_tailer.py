"""Following the log: no reader skips an event, whatever order concurrent writers commit in."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Sequence

import pytest

from productflo.database import DatabaseUrl
from productflo.events.models import NewEvent, RecordedEvent
from productflo.events.store import EventStore, append_batch, connect
from productflo.events.tailer import Tailer
from tests.events import (
    TIMEOUT,
    background,
    follow,
    new_event,
    positions,
    running_store,
    until_listening,
    wait_until_blocked_or_done,
)

pytestmark = pytest.mark.anyio


def assert_complete(seen: Sequence[RecordedEvent], appended: Sequence[NewEvent]) -> None:
    """`seen` is the whole log, once, in order: every position, every event, every version."""
    assert positions(list(seen)) == list(range(1, len(appended) + 1))
    assert Counter(e.event_id for e in seen) == Counter(e.event_id for e in appended)
    versions: dict[str, list[int]] = defaultdict(list)
    for event in seen:
        versions[event.stream].append(event.version)
    expected = Counter(e.stream for e in appended)
    assert dict(versions) == {s: list(range(1, n + 1)) for s, n in expected.items()}


async def test_reader_never_skips_a_slow_transaction(database_url: DatabaseUrl) -> None:
    """A writer holding its transaction open keeps later writers, and so readers, behind it."""
    held = new_event("room:slow", message="held open")
    others = [new_event(f"room:{n % 2}", n=n) for n in range(5)]
    async with (
        asyncio.timeout(TIMEOUT),
        running_store(database_url) as reader_store,
        running_store(database_url) as other_process,
    ):
        tailer = Tailer(reader_store, 0, poll_interval=0.02)  # polls hard: every chance to skip
        with background(follow(tailer, until=6)) as following:
            writer = await connect(database_url.dsn)
            observer = await connect(database_url.dsn)
            try:
                transaction = writer.transaction()
                await transaction.start()
                outcome = await append_batch(writer, [held])  # as the store appends
                assert positions(outcome.new) == [1]
                waiting = [asyncio.create_task(other_process.append([e])) for e in others]
                await wait_until_blocked_or_done(observer, waiting)
                await asyncio.sleep(0.3)  # ~15 polls of the tailer while the slow writer is open

                assert tailer.position == 0, "the tailer moved past a transaction still open"
                assert not following.done()
                assert await reader_store.read(0) == []
                assert await reader_store.head() == 0
                assert not any(task.done() for task in waiting)

                await transaction.commit()
                results = [(await task)[0] for task in waiting]
            finally:
                await writer.close()
                await observer.close()
            seen = await following
        tailer.close()

    assert seen[0].event_id == held.event_id
    assert sorted(r.event.position for r in results) == [2, 3, 4, 5, 6]
    assert_complete(seen, [held, *others])


Plan = list[list[list[NewEvent]]]  # per writer task, its appends, each a list of events


def plan_appends(tasks: int, appends: int, rng: random.Random) -> Plan:
    """What `tasks` concurrent writers will append: `appends` appends each, of 1-3 events."""
    return [
        [
            [new_event(f"room:{rng.randrange(8)}") for _ in range(rng.randint(1, 3))]
            for _ in range(appends)
        ]
        for _ in range(tasks)
    ]


async def _write(store: EventStore, plan: Plan) -> None:
    """Run each task of the plan concurrently on `store`; each appends its batches in turn."""

    async def writer(batches: list[list[NewEvent]]) -> None:
        for batch in batches:
            await store.append(batch)

    await asyncio.gather(*(writer(batches) for batches in plan))


async def _collect_while_writing(
    tailer: Tailer, writers: Sequence[EventStore], tasks: int, appends: int
) -> tuple[list[RecordedEvent], list[NewEvent]]:
    """Run the writers while following the tailer from zero until it has all they wrote."""
    rng = random.Random(20261126)
    plans = [plan_appends(tasks, appends, rng) for _ in writers]
    appended = [event for plan in plans for batches in plan for b in batches for event in b]
    following = asyncio.create_task(follow(tailer, until=len(appended)))
    try:
        await asyncio.gather(
            *(_write(store, plan) for store, plan in zip(writers, plans, strict=True))
        )
        return await following, appended
    finally:
        following.cancel()


async def test_a_tailer_sees_every_event_of_many_concurrent_processes_once_in_order(
    database_url: DatabaseUrl,
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as reader_store:
        tailer = Tailer(reader_store, 0, batch_size=50, poll_interval=0.05)
        async with (
            running_store(database_url) as a,
            running_store(database_url) as b,
            running_store(database_url) as c,
            running_store(database_url) as d,
        ):
            seen, appended = await _collect_while_writing(tailer, [a, b, c, d], 50, 3)
            batches = sum(s.batches_committed for s in (a, b, c, d))
        tailer.close()
    assert len(appended) > 600
    assert batches < 4 * 50 * 3  # group commit happened
    assert_complete(seen, appended)


async def test_a_tailer_fed_its_own_commits_still_sees_every_event_once_in_order(
    database_url: DatabaseUrl,
) -> None:
    """The local fast path (its own commits held in memory) with other processes writing too."""
    async with (
        asyncio.timeout(TIMEOUT),
        running_store(database_url) as local,
        running_store(database_url) as b,
        running_store(database_url) as c,
    ):
        tailer = Tailer(local, 0, batch_size=50, poll_interval=0.05)
        offered: list[int] = []
        local.on_commit(lambda events: offered.extend(positions(events)))
        seen, appended = await _collect_while_writing(tailer, [local, b, c], 40, 3)
        tailer.close()
    assert offered, "the local store committed nothing: the fast path was not exercised"
    assert_complete(seen, appended)


async def test_an_own_commit_after_a_gap_is_read_from_the_log_with_the_gap(
    database_url: DatabaseUrl,
) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        running_store(database_url) as local,
        running_store(database_url) as other,
    ):
        tailer = Tailer(local, 0, poll_interval=30)
        await other.append([new_event(n=1), new_event(n=2)])  # 1, 2: committed elsewhere
        [mine] = await local.append([new_event(n=3)])  # 3: committed here, after a gap
        seen = await follow(tailer, until=3)
        tailer.close()
    assert positions(seen) == [1, 2, 3]
    assert seen[-1].event_id == mine.event.event_id


async def test_a_tailer_starts_after_the_given_position(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append([new_event(n=n) for n in range(5)])
        tailer = Tailer(store, 3, batch_size=1)
        first, second = await tailer.next_batch(), await tailer.next_batch()
        tailer.close()
    assert (positions(first), positions(second)) == ([4], [5])


async def test_a_commit_in_another_process_wakes_a_waiting_tailer(
    database_url: DatabaseUrl,
) -> None:
    """LISTEN/NOTIFY, not the poll: the poll interval is far longer than the test may take."""
    async with (
        asyncio.timeout(TIMEOUT),
        running_store(database_url) as reader_store,
        running_store(database_url) as writer_store,
    ):
        await until_listening(reader_store, database_url)
        tailer = Tailer(reader_store, 0, poll_interval=30)
        for n in (1, 2):  # a second time too: the wake-up is re-armed
            with background(tailer.next_batch()) as waiting:
                await asyncio.sleep(0.2)  # the tailer has read nothing and sleeps on its wake-up
                assert not waiting.done()
                await writer_store.append([new_event(n=n)])
                async with asyncio.timeout(10):  # a commit and a NOTIFY; the poll takes 30 s
                    assert positions(await waiting) == [n]
        tailer.close()


async def test_a_folding_tailer_reads_on_while_behind_and_pauses_once_caught_up(
    database_url: DatabaseUrl,
) -> None:
    """`fold` gathers the commits of an interval into one batch, but never slows a catch-up."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append([new_event(n=n) for n in range(25)])
        tailer = Tailer(store, 0, batch_size=10, fold=1.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sizes = [len(await tailer.next_batch()) for _ in range(3)]
        caught_up = loop.time()
        assert sizes == [10, 10, 5]
        assert caught_up - started < 0.9, "no pause between full batches"
        await store.append([new_event(n=25)])
        assert positions(await tailer.next_batch()) == [26]
        assert loop.time() - caught_up >= 0.95, "once caught up, the next read waits the fold"
        tailer.close()


async def test_a_folding_tailer_takes_every_own_commit_of_its_interval_as_one_batch(
    database_url: DatabaseUrl,
) -> None:
    """Each commit joins the stretch on its own; a tailer that rested through several takes them all
    at once (one commit per interval, it would fall ever further behind a busy log)."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        tailer = Tailer(store, 0, fold=0.2, poll_interval=30)
        await store.append([new_event(n=0)])
        assert positions(await tailer.next_batch()) == [1]
        for n in range(1, 4):  # three commits while the tailer rests
            await store.append([new_event(n=n)])
        assert positions(await tailer.next_batch()) == [2, 3, 4]
        tailer.close()
