"""The event store: appends, idempotency, reads, append-only, group commit, poison isolation."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from productflo import migrate
from productflo.database import DatabaseUrl
from productflo.errors import AppendRefused, StoreError, StoreUnavailable
from productflo.events.models import AppendResult, NewEvent
from productflo.events.store import EventStore
from tests.events import TIMEOUT, database_named, execute, new_event, positions, running_store

pytestmark = pytest.mark.anyio


@pytest.fixture
def other_database(postgres_root: DatabaseUrl) -> Iterator[DatabaseUrl]:
    """A second database, created empty and migrated on its own (not copied from a template)."""
    name = f"productflo_other_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(execute(postgres_root, f"CREATE DATABASE {name}"))
    url = database_named(postgres_root, name)
    migrate.upgrade(url)
    yield url
    asyncio.run(execute(postgres_root, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def append_all(store: EventStore, requests: list[list[NewEvent]]) -> list[Any]:
    """Submit every request at once (so they share batches); results or exceptions, in order."""
    return await asyncio.gather(*(store.append(r) for r in requests), return_exceptions=True)


# -- positions and versions ------------------------------------------------------------------


async def test_positions_start_at_one_and_have_no_holes(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        for size in (1, 3, 2, 5):
            await store.append([new_event() for _ in range(size)])
        assert positions(await store.read(0)) == list(range(1, 12))


async def test_results_carry_the_positions_in_the_order_given(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        events = [new_event(n=n) for n in range(4)]
        results = await store.append(events)
        assert [r.event.event_id for r in results] == [e.event_id for e in events]
        assert [r.event.position for r in results] == [1, 2, 3, 4]
        assert [r.event.data for r in results] == [{"n": n} for n in range(4)]
        assert not any(r.duplicate for r in results)


async def test_each_stream_counts_its_own_versions(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        streams = ["room:a", "room:b", "room:a", "user:u", "room:a", "room:b"]
        await store.append([new_event(streams[0])])
        await store.append([new_event(s) for s in streams[1:4]])
        await store.append([new_event(s) for s in streams[4:]])
        recorded = [(e.stream, e.version) for e in await store.read(0)]
        assert recorded == [
            ("room:a", 1),
            ("room:b", 1),
            ("room:a", 2),
            ("user:u", 1),
            ("room:a", 3),
            ("room:b", 2),
        ]


async def test_a_failed_append_leaves_no_hole_in_positions(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append([new_event()])
        with pytest.raises(StoreError):
            await store.append([new_event(), new_event(text="nul \u0000 here")])
        await store.append([new_event()])
        assert positions(await store.read(0)) == [1, 2]
        assert await store.head() == 2


# -- idempotency --------------------------------------------------------------------------------


async def test_a_known_event_id_is_not_appended_again(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        original = new_event(message="first")
        [first] = await store.append([original])
        await store.append([new_event()])
        resend = NewEvent("room:lobby", "chat", {"message": "resent"}, event_id=original.event_id)
        [again] = await store.append([resend])
        assert again.duplicate
        assert again.event.position == first.event.position == 1
        assert again.event.data == {"message": "first"}
        assert again.event.version == 1
        assert positions(await store.read(0)) == [1, 2]


async def test_a_resent_request_mixes_known_and_new_events(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        known = new_event()
        await store.append([known])
        fresh = new_event()
        results = await store.append([known, fresh])
        assert [(r.duplicate, r.event.position) for r in results] == [(True, 1), (False, 2)]
        assert await store.head() == 2


def _implied_join(message: NewEvent) -> NewEvent:
    return NewEvent(message.stream, "join", {}, {"implied_by": str(message.event_id)})


async def test_a_join_implied_by_a_stored_message_is_skipped_and_by_a_new_one_written(
    database_url: DatabaseUrl,
) -> None:
    """A resend of a message that joined its sender to the room joins nobody again (0008)."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        message = new_event()
        first = await store.append([_implied_join(message), message])
        assert [(r.event.type, r.duplicate) for r in first] == [("join", False), ("chat", False)]
        await store.append([new_event()])  # the sender's leave, say
        resend = await store.append([_implied_join(message), message])
        assert [(r.event.type, r.duplicate, r.event.position) for r in resend] == [
            ("chat", True, 2)
        ]
        fresh = new_event()
        both = await store.append([_implied_join(fresh), fresh])
        assert [r.event.position for r in both] == [4, 5]
        assert positions(await store.read(0)) == [1, 2, 3, 4, 5]


async def test_a_key_repeated_inside_one_batch_is_written_once(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        first = new_event(message="one")
        repeat = NewEvent(first.stream, first.type, {"message": "two"}, event_id=first.event_id)
        results = await store.append([first, repeat, new_event()])
        assert [(r.duplicate, r.event.position) for r in results] == [
            (False, 1),
            (True, 1),
            (False, 2),
        ]
        assert results[1].event.data == {"message": "one"}
        assert positions(await store.read(0)) == [1, 2]


async def test_a_key_repeated_across_requests_of_one_batch_is_written_once(
    database_url: DatabaseUrl,
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        key = uuid.uuid4()
        requests = [[NewEvent("room:lobby", "chat", {"try": n}, event_id=key)] for n in range(5)]
        outcomes: list[list[AppendResult]] = await append_all(store, requests)
        assert {o[0].event.position for o in outcomes} == {1}
        assert sum(not o[0].duplicate for o in outcomes) == 1
        assert await store.head() == 1


# -- reads --------------------------------------------------------------------------------------


async def test_read_returns_events_after_a_position_oldest_first(
    database_url: DatabaseUrl,
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append([new_event(n=n) for n in range(10)])
        assert positions(await store.read(0)) == list(range(1, 11))
        assert positions(await store.read(4, limit=3)) == [5, 6, 7]
        assert await store.read(10) == []
        [event] = await store.read(2, limit=1)
        assert (event.stream, event.type, event.data) == ("room:lobby", "chat", {"n": 2})
        assert event.recorded_at.tzinfo is not None


async def test_read_stream_pages_back_from_a_position_oldest_first(
    database_url: DatabaseUrl,
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        for n in range(6):  # room:a at odd positions, room:b at even ones
            await store.append([new_event("room:a", n=n), new_event("room:b", n=n)])
        newest = await store.read_stream("room:a", limit=3)
        assert positions(newest) == [7, 9, 11]
        older = await store.read_stream("room:a", before=newest[0].position, limit=3)
        assert positions(older) == [1, 3, 5]
        assert await store.read_stream("room:a", before=1) == []
        assert positions(await store.read_stream("room:b")) == [2, 4, 6, 8, 10, 12]
        assert await store.read_stream("room:none") == []


async def test_read_stream_filters_by_type(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        kinds = ["join", "chat", "chat", "leave", "chat", "join"]
        await store.append([new_event("room:a", kind) for kind in kinds])
        membership = await store.read_stream("room:a", types=["join", "leave"])
        assert [(e.position, e.type) for e in membership] == [
            (1, "join"),
            (4, "leave"),
            (6, "join"),
        ]
        last_chat = await store.read_stream("room:a", types=["chat"], limit=1)
        assert positions(last_chat) == [5]
        assert await store.read_stream("room:a", types=[]) == []


async def test_head_is_the_newest_position(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        assert await store.head() == 0
        await store.append([new_event(), new_event()])
        assert await store.head() == 2
        await store.append([new_event()])
        assert await store.head() == 3


async def test_data_and_metadata_come_back_as_stored(database_url: DatabaseUrl) -> None:
    data = {"message": "héllo ✓", "nested": {"list": [1, 2.5, None, True]}, "big": 2**62}
    metadata = {"user_id": "alice", "transport": "native", "authenticated": False}
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        await store.append([NewEvent("room:a", "chat", data, metadata)])
        [event] = await store.read(0)
        assert (event.data, event.metadata, event.user_id) == (data, metadata, "alice")


# -- the log's identity ---------------------------------------------------------------------------


async def test_log_id_is_stable_across_stores_on_one_database(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with running_store(database_url) as first:
            await first.append([new_event()])
            log_id = first.log_id
        async with running_store(database_url) as second:
            assert second.log_id == log_id
        assert isinstance(log_id, uuid.UUID)


async def test_log_id_differs_between_databases(
    database_url: DatabaseUrl, other_database: DatabaseUrl
) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        running_store(database_url) as one,
        running_store(other_database) as other,
    ):
        assert one.log_id is not None and other.log_id is not None
        assert one.log_id != other.log_id


# -- append-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        'UPDATE events SET data = \'{"message": "rewritten"}\'::jsonb',
        "UPDATE events SET position = position + 100",
        "DELETE FROM events",
        "DELETE FROM events WHERE position = 1",
        "TRUNCATE events",
        "TRUNCATE events, log_head",
    ],
)
async def test_the_database_refuses_to_change_or_remove_events(
    database_url: DatabaseUrl, statement: str
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with running_store(database_url) as store:
            await store.append([new_event(), new_event()])
        connection = await asyncpg.connect(database_url.dsn)
        try:
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await connection.execute(statement)
            rows = await connection.fetch("SELECT position, data::text FROM events ORDER BY 1")
        finally:
            await connection.close()
        assert [(r["position"], r["data"]) for r in rows] == [
            (1, '{"message": "hello"}'),
            (2, '{"message": "hello"}'),
        ]


# -- group commit ---------------------------------------------------------------------------------


async def test_concurrent_appends_share_transactions(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        requests = [
            [new_event(f"room:{n % 7}", n=n), new_event(f"user:{n}", n=n)] for n in range(100)
        ]
        outcomes: list[list[AppendResult]] = await append_all(store, requests)
        assert store.batches_committed < len(requests)
        assert store.events_committed == 200
        for request, results in zip(requests, outcomes, strict=True):
            assert [r.event.event_id for r in results] == [e.event_id for e in request]
            assert [r.event.data for r in results] == [e.data for e in request]
            assert results[1].event.position == results[0].event.position + 1
        everything = sorted(r.event.position for results in outcomes for r in results)
        assert everything == list(range(1, 201))


async def test_submitted_requests_commit_in_submission_order(database_url: DatabaseUrl) -> None:
    """A connection may pipeline its appends (submit) and still find them in the log in order."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        futures = []
        for n in range(200):
            futures.append(store.submit([new_event(n=n)]))
            if n % 7 == 0:
                await asyncio.sleep(0)  # let a batch leave while more are submitted
        poisoned = store.submit([POISONS["nul-in-data"]])
        futures += [store.submit([new_event(n=n)]) for n in range(200, 250)]
        results = [(await future)[0] for future in futures]
        with pytest.raises(StoreError):
            await poisoned
        assert [r.event.data["n"] for r in results] == list(range(250))
        assert [r.event.position for r in results] == list(range(1, 251))
        assert store.batches_committed > 1


async def test_a_commit_listener_receives_every_new_event_once_in_order(
    database_url: DatabaseUrl,
) -> None:
    """Each batch is reported whole, in commit order, none missed (the local fast path)."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        reported: list[list[int]] = []
        store.on_commit(lambda events: reported.append(positions(events)))
        known = new_event()
        await store.append([known])

        async def append_after(delay: float, events: list[NewEvent]) -> None:
            await asyncio.sleep(delay)
            await store.append(events)

        delays = [n % 10 / 1000 for n in range(100)]  # spread over 10 ms: many batches in flight
        await asyncio.gather(*(append_after(d, [new_event(), known]) for d in delays))
        assert [p for batch in reported for p in batch] == list(range(1, 102))
        assert len(reported) > 2


async def test_close_commits_what_is_queued_and_refuses_later_appends(
    database_url: DatabaseUrl,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        store = EventStore(database_url.dsn)
        await store.start()
        pending = [asyncio.create_task(store.append([new_event()])) for _ in range(10)]
        await asyncio.sleep(0)  # every task has queued its request
        await store.close()
        assert sorted(r[0].event.position for r in await asyncio.gather(*pending)) == list(
            range(1, 11)
        )
        with pytest.raises(StoreUnavailable):
            await store.append([new_event()])
        async with running_store(database_url) as reopened:
            assert await reopened.head() == 10


# -- poison isolation -----------------------------------------------------------------------------

POISONS = {
    # PostgreSQL's jsonb cannot hold U+0000.
    "nul-in-data": NewEvent("room:lobby", "chat", {"message": "a\u0000b"}),
    "nul-in-metadata": NewEvent("room:lobby", "chat", {}, {"client_msg_id": "\u0000"}),
    # json.dumps writes NaN, which is not JSON: jsonb refuses it.
    "nan-in-data": NewEvent("room:lobby", "chat", {"score": float("nan")}),
    "infinity-in-data": NewEvent("room:lobby", "chat", {"score": [float("-inf")]}),
    # text columns cannot hold U+0000 either.
    "nul-in-stream": NewEvent("room:a\u0000b", "chat", {}),
    "nul-in-type": NewEvent("room:lobby", "ch\u0000at", {}),
    # A lone surrogate has no UTF-8 encoding: jsonb refuses its escape, the driver its text.
    "surrogate-in-data": NewEvent("room:lobby", "chat", {"message": "\ud800"}),
    "surrogate-in-a-data-key": NewEvent("room:lobby", "chat", {"m": [{"\udfff": 1}]}),
    "surrogate-in-metadata": NewEvent("room:lobby", "chat", {}, {"user_id": "\udc00"}),
}


@pytest.mark.parametrize("poison", list(POISONS.values()), ids=list(POISONS))
async def test_a_refused_event_fails_only_its_own_request(
    database_url: DatabaseUrl, poison: NewEvent
) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        good = [[new_event(n=n)] for n in range(6)]
        outcomes = await append_all(store, [*good[:3], [poison], *good[3:]])
        assert isinstance(outcomes[3], StoreError)
        assert not isinstance(outcomes[3], StoreUnavailable)
        fine = [o for n, o in enumerate(outcomes) if n != 3]
        assert all(isinstance(o, list) for o in fine), fine
        stored = await store.read(0)
        assert positions(stored) == list(range(1, 7))
        assert {e.event_id for e in stored} == {r[0].event_id for r in good}
        assert [o[0].event.position for o in fine] == list(range(1, 7))  # submission order
        await store.append([new_event()])  # the appender is still running
        assert await store.head() == 7


@pytest.mark.parametrize("poison", list(POISONS.values()), ids=list(POISONS))
async def test_a_bad_event_never_fails_the_batch_it_was_submitted_with(
    database_url: DatabaseUrl, poison: NewEvent
) -> None:
    """Refused when submitted, the bad event never reaches the database: the good requests
    around it commit together in the one batch they were queued in, not retried one by one."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        good = [[new_event(n=n)] for n in range(6)]
        outcomes = await append_all(store, [*good[:3], [poison], *good[3:]])
        assert isinstance(outcomes[3], StoreError)
        assert not isinstance(outcomes[3], StoreUnavailable)
        assert [type(o) for n, o in enumerate(outcomes) if n != 3] == [list] * 6
        assert (store.batches_committed, store.events_committed) == (1, 6)


async def test_a_refused_request_stores_none_of_its_events(database_url: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        atomic = [new_event("room:a"), POISONS["nul-in-data"], new_event("room:b")]
        outcomes = await append_all(store, [[new_event("room:c")], atomic])
        assert isinstance(outcomes[1], StoreError)
        assert [(e.stream, e.version) for e in await store.read(0)] == [("room:c", 1)]


async def test_data_that_is_not_json_fails_only_its_own_request(
    database_url: DatabaseUrl,
) -> None:
    """Data json.dumps cannot encode is the request's fault: its neighbours still commit."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        unencodable = NewEvent("room:lobby", "chat", {"at": datetime.now(UTC)})
        async with asyncio.timeout(5):  # once, this killed the appender and hung every append
            outcomes = await append_all(store, [[new_event()], [unencodable], [new_event()]])
        assert isinstance(outcomes[1], StoreError)
        assert not isinstance(outcomes[1], StoreUnavailable)
        assert [type(outcomes[n]) for n in (0, 2)] == [list, list], outcomes
        async with asyncio.timeout(5):
            await store.append([new_event()])
        assert positions(await store.read(0)) == [1, 2, 3]


async def test_a_stream_the_driver_cannot_encode_fails_only_its_request(
    database_url: DatabaseUrl,
) -> None:
    """A lone surrogate cannot be sent as UTF-8: that is the request's fault, not the server's."""
    async with asyncio.timeout(TIMEOUT), running_store(database_url) as store:
        bad = NewEvent("room:\ud800", "chat", {})
        outcomes = await append_all(store, [[new_event()], [bad], [new_event()]])
        assert isinstance(outcomes[1], StoreError)
        assert not isinstance(outcomes[1], StoreUnavailable)
        assert [isinstance(outcomes[n], list) for n in (0, 2)] == [True, True]
        assert await store.head() == 2


# -- secure rooms: the log's own rule (migration 0006) -------------------------------------------


def _from(authenticated: bool, stream: str, type: str = "chat") -> NewEvent:
    metadata = {"user_id": "signed-in" if authenticated else "anon", "authenticated": authenticated}
    return NewEvent(stream=stream, type=type, data={"message": "hi"}, metadata=metadata)


async def test_an_anonymous_event_in_a_secure_room_is_refused_in_the_same_batch(
    database_url: DatabaseUrl,
) -> None:
    """Two processes opening one new room at once: whichever commits first decides, and the
    anonymous message after a secure opener is not stored, even inside one group commit."""
    async with running_store(database_url) as store:
        secure, anonymous = await append_all(
            store,
            [
                [_from(True, "room:new", "join"), _from(True, "room:new")],
                [_from(False, "room:new", "join"), _from(False, "room:new")],
            ],
        )
        assert isinstance(anonymous, AppendRefused)
        assert [r.event.version for r in secure] == [1, 2]
        assert [(e.stream, e.version) for e in await store.read(0)] == [
            ("room:new", 1),
            ("room:new", 2),
        ], "nothing of the refused request is stored, and no hole is left"


async def test_an_anonymous_event_in_a_secure_room_is_refused_by_another_store(
    database_url: DatabaseUrl,
) -> None:
    async with running_store(database_url) as one, running_store(database_url) as two:
        await one.append([_from(True, "room:secure", "join")])
        with pytest.raises(AppendRefused):
            await two.append([_from(False, "room:secure")])
        # The rule concerns secure rooms only; and signed-in users may use anonymous rooms.
        await two.append([_from(False, "room:open"), _from(True, "room:open")])
        await one.append([_from(False, "room:open")])
        assert [e.stream for e in await one.read(0)] == ["room:secure", *["room:open"] * 3]


async def test_events_without_an_authenticated_flag_are_not_checked(
    database_url: DatabaseUrl,
) -> None:
    """The assistant's answers and notifications carry no flag: they are never refused."""
    async with running_store(database_url) as store:
        await store.append([_from(True, "room:secure", "join")])
        [answer] = await store.append([new_event("room:secure", "idea_response")])
        assert answer.event.version == 2
