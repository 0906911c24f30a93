"""The event log in PostgreSQL: group-committed appends, ordered reads, wake-ups.

Why positions come from one counter row and not from a sequence
----------------------------------------------------------------
Readers follow the log by asking for `position > last_seen`. With a sequence, two transactions can
take positions 7 and 8 and commit in the order 8, 7: a reader that looks in between sees 8, moves
its cursor past 7, and never sees 7 once it commits. Marten, Message DB and the Python
eventsourcing library all shipped that bug once.

So every append transaction first locks the single row of `log_head` (`SELECT ... FOR UPDATE`),
takes the next positions from it, inserts, moves the head and commits (all inside the SQL function
`append_events()`, migration 0003, so that a batch is one round trip). The row lock is released
only after the commit is visible, so the transaction holding positions 8.. cannot even start
inserting before the one holding 7 has committed: commit order equals position order, positions
have no holes (a rolled-back transaction rolls the head back too), and a reader can never see 8
without 7. The cost is that appends are serialized across every process on the database; group
commit pays for it by making each transaction carry every event that queued up meanwhile.

Group commit
------------
A durable commit costs a WAL flush; a transaction of a thousand rows costs little more than one of
a single row. Each process therefore sends all appends through one appender task that takes
whatever has queued up, writes it as one transaction, and only then releases the callers (nobody is
acknowledged before their event is durable: `synchronous_commit` stays on). A batch that fails on
the data of one of its requests is retried request by request, so one bad message cannot fail its
neighbours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import asyncpg

from productflo import metrics
from productflo.errors import AppendRefused, StoreError, StoreUnavailable
from productflo.events.models import (
    MAX_POSITION,
    AppendResult,
    NewEvent,
    Outline,
    RecordedEvent,
    room_stream,
)
from productflo.events.recent import Recent
from productflo.jsontext import decode_stored, encode_text, is_storable

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "productflo_events"
# Signals that are delivered to every process but never stored (typing).
VOLATILE_CHANNEL = "productflo_volatile"
MAX_BATCH_EVENTS = 2000
COMMAND_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0
# With a hot standby for reads: how long a read up to a position waits for the standby to have
# replayed that far before it asks the primary, and how soon a read that came back short of the
# head the primary told is tried again (a standby replays within milliseconds of the commit).
STANDBY_WAIT_SECONDS = 2.0
STANDBY_RETRY_SECONDS = 0.002

_COLUMNS = "position, event_id, stream, version, type, data, metadata, recorded_at"

# Errors that say the connection, not the request, is at fault. InternalClientError is what
# asyncpg raises when the server ended a session between two of its protocol steps.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
)

_DATABASE_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, asyncpg.PostgresError)

CommitListener = Callable[[list[RecordedEvent]], None]
VolatileListener = Callable[[dict[str, Any]], None]


async def _create_pool(dsn: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=10, command_timeout=COMMAND_TIMEOUT, init=_init_connection
    )


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=encode_text, decoder=decode_stored, schema="pg_catalog"
    )


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with this package's codecs, or StoreUnavailable."""
    try:
        connection = await asyncpg.connect(dsn, command_timeout=COMMAND_TIMEOUT, timeout=5)
    except _DATABASE_ERRORS as error:
        raise StoreUnavailable("cannot connect to the database") from error
    try:
        await _init_connection(connection)
    except Exception as error:  # the server went away mid-setup: no half-made connection leaks
        connection.terminate()
        raise StoreUnavailable("cannot set up the database connection") from error
    return connection


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Driver errors inside the block raised as StoreUnavailable (a read model's own queries
    use it too: driver errors are translated here, once)."""
    try:
        yield
    except _DATABASE_ERRORS as error:
        raise StoreUnavailable("the database is unreachable") from error


def record(row: asyncpg.Record | Mapping[str, Any]) -> RecordedEvent:
    """A row with the events table's columns, as a RecordedEvent."""
    return RecordedEvent(
        position=row["position"],
        event_id=row["event_id"],
        stream=row["stream"],
        version=row["version"],
        type=row["type"],
        data=row["data"],
        metadata=row["metadata"],
        recorded_at=row["recorded_at"],
    )


@dataclass(frozen=True)
class _Prepared:
    """An event with its JSON already encoded: done by the submitter, off the appender's path,
    so that an event PostgreSQL would refuse for its content (data that is not JSON, NaN, a NUL
    or a lone surrogate anywhere) fails its own request and never reaches a batch."""

    event: NewEvent
    data: str
    metadata: str

    @classmethod
    def of(cls, event: NewEvent) -> _Prepared:
        if not all(map(is_storable, (event.stream, event.type, event.data, event.metadata))):
            raise StoreError("the event holds text PostgreSQL cannot store")
        try:
            data = encode_text(event.data)
            metadata = encode_text(event.metadata)
        except (TypeError, ValueError, RecursionError) as error:
            raise StoreError("the event's data is not JSON") from error
        return cls(event, data, metadata)


@dataclass
class _Request:
    events: Sequence[_Prepared]
    future: asyncio.Future[list[AppendResult]]


class EventStore:
    """The log for one process: a read pool, one appender task, one LISTEN connection; with
    `read_dsn` (a hot standby, PRODUCTFLO_DATABASE_READ_URL), a second pool for the log's reads.

    On a standby: a physical replica replays the primary's commits in their order, and positions
    are committed in position order (append_events(), migration 0003), so what a standby holds is
    always a prefix of the log. A read with no upper bound (`read`, the tailers') takes whatever
    prefix it holds, and the tailers read again until they reach the head the primary's NOTIFY
    told (`Recent`, a few milliseconds apart). A read of everything up to a position (replay's,
    a user's membership, a document's updates, a history page) first waits for the standby to
    have replayed that far (`_reader`), and asks the primary when it does not within
    STANDBY_WAIT_SECONDS. What must read its own writes (appends, idempotency, checkpoints, the
    projections' tables, which room is secure) stays on the primary."""

    def __init__(self, dsn: str, *, read_dsn: str | None = None) -> None:
        self._dsn = dsn
        self._read_dsn = read_dsn
        self._pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._appender: asyncio.Task[None] | None = None
        self._lane = _Lane(dsn)
        self._listener: asyncio.Task[None] | None = None
        self._recent: Recent | None = None
        self._wake_listeners: set[Callable[[], None]] = set()
        self._commit_listeners: list[CommitListener] = []
        self._volatile_listeners: list[VolatileListener] = []
        self._closing = False
        self.log_id: uuid.UUID | None = None
        self.batches_committed = 0
        self.events_committed = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._pool = await _create_pool(self._dsn)
        if self._read_dsn is not None:
            self._read_pool = await _create_pool(self._read_dsn)
        self.log_id = await self._read_log_id()
        retry = STANDBY_RETRY_SECONDS if self._read_pool is not None else None
        self._recent = Recent(self.read, await self.head(), retry_short=retry)
        self._appender = asyncio.create_task(self._append_loop(), name="productflo-appender")
        self._listener = asyncio.create_task(self._listen_loop(), name="productflo-listener")

    async def close(self) -> None:
        """Commit what is queued, then stop. Appends submitted after this fail."""
        self._closing = True
        if self._appender is not None:
            sentinel = asyncio.get_running_loop().create_future()
            await self._queue.put(_Request((), sentinel))  # drains everything queued before it
            with contextlib.suppress(asyncio.CancelledError):
                await self._appender
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._recent is not None:
            self._recent.close()
        self._lane.close()
        for pool in (self._read_pool, self._pool):
            if pool is None:
                continue
            # A graceful close waits for every connection to be released, and asyncpg can wait
            # forever on a cancelled query's acknowledgement (MagicStack/asyncpg#431, #1356): a
            # stop must end all the same.
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await pool.close()
            except TimeoutError:
                log.warning("a read pool did not close within %.0f s; terminated", CLOSE_TIMEOUT)
                pool.terminate()

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("EventStore.start() has not run")
        return self._pool

    @property
    def read_pool(self) -> asyncpg.Pool:
        """Where reads that need not see this instant's commits go (the audit's): the standby's
        pool when there is one."""
        return self._read_pool if self._read_pool is not None else self.pool

    async def _reader(self, upto: int) -> asyncpg.Pool:
        """The pool to read positions up to `upto` from: the standby once it holds them (it
        is waited for, briefly), else the primary."""
        if self._read_pool is None:
            return self.pool
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STANDBY_WAIT_SECONDS
        pause = STANDBY_RETRY_SECONDS
        while True:
            try:
                async with translated():
                    replayed = await self._read_pool.fetchval("SELECT position FROM log_head")
            except StoreUnavailable:
                return self.pool  # the standby is away: the primary answers
            if replayed >= upto:
                return self._read_pool
            if loop.time() + pause > deadline:
                log.info("the standby is behind position %d; reading from the primary", upto)
                return self.pool
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    @property
    def recent(self) -> Recent:
        """The end of the log this process holds, shared by its tailers (recent.py)."""
        if self._recent is None:
            raise RuntimeError("EventStore.start() has not run")
        return self._recent

    # -- appending -----------------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> list[AppendResult]:
        """Append atomically, in order; return once durable. Known event ids are not rewritten,
        and a join implied by a message already stored (`metadata.implied_by`) is left out, of
        the log and of the results (migration 0008)."""
        return await asyncio.shield(self.submit(events))

    def submit(self, events: Sequence[NewEvent]) -> asyncio.Future[list[AppendResult]]:
        """Queue an append without waiting for it; the future resolves once it is durable.

        Requests are committed in the order they were submitted, so a caller may submit several
        before the first resolves (a connection pipelining its messages) and still have them
        in the log in that order.
        """
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_mark_retrieved)
        if self._closing:
            future.set_exception(StoreUnavailable("the server is shutting down"))
        elif not events:
            future.set_result([])
        else:
            try:
                prepared = [_Prepared.of(event) for event in events]
            except StoreError as error:
                future.set_exception(error)
            else:
                self._queue.put_nowait(_Request(prepared, future))
        return future

    def on_commit(self, listener: CommitListener) -> Callable[[], None]:
        """Call `listener` with each batch this process commits, in commit order, right after;
        returns the unsubscribe function."""
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    async def _append_loop(self) -> None:
        # One batch at a time, in queue order: that is what keeps each submitter's requests in
        # the log in the order it submitted them.
        stopping = False
        while not stopping:
            batch = [await self._queue.get()]
            size = len(batch[0].events)
            while size < MAX_BATCH_EVENTS and not self._queue.empty():
                batch.append(self._queue.get_nowait())
                size += len(batch[-1].events)
            if any(not request.events for request in batch):
                stopping = True
                batch = [request for request in batch if request.events]
            if not batch:
                continue
            try:
                await self._commit_batch(self._lane, batch)
            except Exception:  # the appender must outlive any one batch
                log.exception("appender: unexpected failure")
                for request in batch:
                    _fail(request, StoreUnavailable("the append failed"))

    async def _commit_batch(self, lane: _Lane, batch: list[_Request]) -> None:
        try:
            with metrics.APPEND_SECONDS.time():
                outcome = await lane.write([event for r in batch for event in r.events])
        except StoreUnavailable as error:
            for request in batch:
                _fail(request, error)
            return
        except StoreError:
            if len(batch) > 1:
                # One request's data is at fault: isolate it so its neighbours still commit.
                for request in batch:
                    await self._commit_batch(lane, [request])
            else:
                _fail(batch[0], StoreError("the event could not be stored"))
            return
        offset = 0
        for request in batch:
            count = len(request.events)
            results = outcome.results[offset : offset + count]
            if any(result is None for result in results):
                _fail(request, AppendRefused("an anonymous event in a secure room"))
            elif not request.future.done():
                request.future.set_result([r for r in results if isinstance(r, AppendResult)])
            offset += count
        if outcome.new:
            self.batches_committed += 1
            self.events_committed += len(outcome.new)
            metrics.EVENTS_APPENDED.inc(len(outcome.new))
            metrics.APPEND_BATCH_SIZE.observe(len(outcome.new))
            self.recent.learn(outcome.new)
            for listener in self._commit_listeners:
                listener(outcome.new)

    # -- reading -------------------------------------------------------------------------------

    async def read(self, after: int, limit: int = 1000) -> list[RecordedEvent]:
        """Events with position > after, oldest first (on a standby, as far as it has them)."""
        rows = await self._fetch_from(
            self.read_pool,
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2",
            after,
            limit,
        )
        return [record(row) for row in rows]

    async def read_positions(self, positions: list[int]) -> list[RecordedEvent]:
        """The events at the given positions, oldest first."""
        rows = await self._fetch_from(
            await self._reader(max(positions, default=0)),
            f"SELECT {_COLUMNS} FROM events WHERE position = ANY($1::bigint[]) ORDER BY position",
            positions,
        )
        return [record(row) for row in rows]

    async def read_stream(
        self,
        stream: str,
        *,
        before: int | None = None,
        after: int = 0,
        limit: int = 100,
        types: Iterable[str] | None = None,
    ) -> list[RecordedEvent]:
        """The newest `limit` events of a stream between two positions, oldest first."""
        upto = self.recent.head if before is None else min(before - 1, self.recent.head)
        rows = await self._fetch_from(
            await self._reader(upto),
            f"""
            SELECT {_COLUMNS} FROM events
            WHERE stream = $1 AND position < $2 AND position > $3
              AND ($4::text[] IS NULL OR type = ANY($4))
            ORDER BY position DESC LIMIT $5
            """,
            stream,
            before if before is not None else MAX_POSITION,
            after,
            list(types) if types is not None else None,
            limit,
        )
        return [record(row) for row in reversed(rows)]

    async def read_outlines(self, streams: Collection[str], after: int, upto: int) -> list[Outline]:
        """The light columns of the streams' events in (after, upto], oldest first."""
        rows = await self._fetch_from(
            await self._reader(upto),
            """
            SELECT position, stream, type, metadata->>'user_id' AS actor,
                   CASE WHEN stream LIKE 'user:%' THEN data->'details'->>'room_id'
                        WHEN type IN ('doc_open', 'doc_update') THEN data->>'doc_id' END AS about
            FROM events
            WHERE stream = ANY($1::text[]) AND position > $2 AND position <= $3
            ORDER BY position
            """,
            sorted(streams),
            after,
            upto,
        )
        return [
            Outline(r["position"], r["stream"], r["type"], r["actor"], r["about"]) for r in rows
        ]

    # The membership reads name their types in the SQL itself: the partial index on join/leave
    # events by user (migration 0002) serves only a query whose predicate implies its own.

    async def membership_streams(self, user_id: str, after: int, upto: int) -> set[str]:
        """The streams in which `user_id` joined or left in (after, upto]."""
        rows = await self._fetch_from(
            await self._reader(upto),
            """
            SELECT DISTINCT stream FROM events
            WHERE metadata->>'user_id' = $1 AND type IN ('join', 'leave')
              AND position > $2 AND position <= $3
            """,
            user_id,
            after,
            upto,
        )
        return {row["stream"] for row in rows}

    async def last_membership(self, user_id: str, upto: int) -> dict[str, str]:
        """Per stream, the type (`join` or `leave`) of the last membership event of `user_id`
        at or before `upto`."""
        rows = await self._fetch_from(
            await self._reader(upto),
            """
            SELECT DISTINCT ON (stream) stream, type FROM events
            WHERE metadata->>'user_id' = $1 AND type IN ('join', 'leave') AND position <= $2
            ORDER BY stream, position DESC
            """,
            user_id,
            upto,
        )
        return {row["stream"]: row["type"] for row in rows}

    # -- documents (SPEC section 7): each read by its partial index of migration 0009 ----------

    async def doc_updates(
        self, room_id: str, doc_id: str, after: int, upto: int
    ) -> list[DocUpdate]:
        """The updates of a room's document in (after, upto], in log order."""
        rows = await self._fetch_from(
            await self._reader(upto), DOC_UPDATES, room_stream(room_id), doc_id, after, upto + 1
        )
        return [doc_update(row) for row in rows]

    async def doc_activity(self, room_id: str, after: int) -> list[tuple[str, int, datetime]]:
        """(doc id, position, time) of each update of the room's documents after `after`."""
        rows = await self._fetch_from(
            await self._reader(self.recent.head),
            """
            SELECT data->>'doc_id' AS doc, position, recorded_at FROM events
            WHERE stream = $1 AND type = 'doc_update' AND position > $2
            ORDER BY position
            """,
            room_stream(room_id),
            after,
        )
        return [(row["doc"], row["position"], row["recorded_at"]) for row in rows]

    async def opened_docs(self, user_id: str, upto: int) -> set[tuple[str, str]]:
        """The documents (room, doc id) `user_id` opened at or before `upto`."""
        rows = await self._fetch_from(
            await self._reader(upto),
            """
            SELECT DISTINCT stream, data->>'doc_id' AS doc FROM events
            WHERE metadata->>'user_id' = $1 AND type = 'doc_open' AND position <= $2
            """,
            user_id,
            upto,
        )
        return {(row["stream"].removeprefix("room:"), row["doc"]) for row in rows}

    async def first_authenticated(self, streams: Collection[str]) -> dict[str, bool]:
        """For each stream that has events, whether its first came from an authenticated
        connection (one probe of the (stream, version) unique index each)."""
        rows = await self._fetch(
            """
            SELECT s.stream,
                   (SELECT coalesce(e.metadata->'authenticated' = 'true'::jsonb, false)
                    FROM events e WHERE e.stream = s.stream ORDER BY e.version LIMIT 1) AS first
            FROM unnest($1::text[]) AS s(stream)
            """,
            sorted(streams),
        )
        return {row["stream"]: row["first"] for row in rows if row["first"] is not None}

    async def contains(self, event_id: uuid.UUID) -> bool:
        """Whether an event with this id (idempotency key) is in the log."""
        return bool(await self._fetch("SELECT 1 FROM events WHERE event_id = $1", event_id))

    async def head(self) -> int:
        """The position of the newest committed event (0 for an empty log)."""
        value = await self._fetchval("SELECT position FROM log_head")
        return int(value)

    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

    async def _read_log_id(self) -> uuid.UUID:
        value = await self._fetchval("SELECT log_id FROM log_head")
        return uuid.UUID(str(value))

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._fetch_from(self.pool, query, *args)

    async def _fetch_from(self, pool: asyncpg.Pool, query: str, *args: Any) -> list[asyncpg.Record]:
        async with translated():
            return list(await pool.fetch(query, *args))

    async def _fetchval(self, query: str, *args: Any) -> Any:
        async with translated():
            return await self.pool.fetchval(query, *args)

    # -- wake-ups ------------------------------------------------------------------------------

    def subscribe_wakeups(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` whenever any process commits; returns the unsubscribe function."""
        self._wake_listeners.add(callback)
        return lambda: self._wake_listeners.discard(callback)

    def on_volatile(self, listener: VolatileListener) -> None:
        """Call `listener` with every volatile signal published by any process."""
        self._volatile_listeners.append(listener)

    async def publish_volatile(self, payload: dict[str, Any]) -> None:
        """Send a signal to every process, through PostgreSQL, without storing it."""
        await self._fetchval("SELECT pg_notify($1, $2)", VOLATILE_CHANNEL, json.dumps(payload))

    def _receive_volatile(self, _c: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            message = json.loads(str(payload))
        except ValueError:
            return
        for listener in self._volatile_listeners:
            listener(message)

    def _notified(self, _c: object, _pid: int, _channel: str, payload: object) -> None:
        """A commit's NOTIFY: its payload is the new head (append_events(), migration 0003)."""
        with contextlib.suppress(ValueError):
            self.recent.notified(int(str(payload)))
        self._wake_all()

    def _wake_all(self) -> None:
        for callback in list(self._wake_listeners):
            callback()

    async def _listen_loop(self) -> None:
        """Keep one LISTEN connection; on loss, wake everyone (they poll) and reconnect."""
        delay = 0.1
        while True:
            try:
                connection = await connect(self._dsn)
            except StoreUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            lost = asyncio.Event()
            connection.add_termination_listener(_setter(lost))
            try:
                await connection.add_listener(NOTIFY_CHANNEL, self._notified)
                await connection.add_listener(VOLATILE_CHANNEL, self._receive_volatile)
                self.recent.listening(True)  # a read from here on sees what came meanwhile
                self._wake_all()  # anything committed while we were not listening
                await lost.wait()
            except _CONNECTION_ERRORS:
                pass
            finally:
                connection.terminate()
            self.recent.listening(False)
            self._wake_all()


class _Lane:
    """The appending connection, reconnected after any failure."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection: asyncpg.Connection | None = None

    async def write(self, batch: list[_Prepared]) -> _Outcome:
        connection = await self._connect()
        try:
            return await _append_prepared(connection, batch)
        except _CONNECTION_ERRORS as error:
            self.close()
            raise StoreUnavailable("the database is unreachable") from error
        except asyncpg.PostgresError as error:
            log.warning("append failed: %s", error.__class__.__name__)
            if connection.is_closed():
                self.close()
                raise StoreUnavailable("the database connection was lost") from error
            raise StoreError("append refused by the database") from error
        except Exception as error:
            # The driver in a state it cannot explain (e.g. the server ended the session between
            # two statements): never trust that connection again.
            log.warning("append failed: %r", error)
            self.close()
            raise StoreUnavailable("the database connection failed") from error

    async def _connect(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await connect(self._dsn)
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()


class DocUpdate(NamedTuple):
    position: int
    recorded_at: datetime
    update: bytes


# A document's updates in log order, between two positions (exclusive): `events_doc_updates`.
DOC_UPDATES = """
    SELECT position, recorded_at, data->>'update' AS update FROM events
    WHERE stream = $1 AND data->>'doc_id' = $2 AND type = 'doc_update'
      AND position > $3 AND position < $4
    ORDER BY position
"""


def doc_update(row: asyncpg.Record) -> DocUpdate:
    return DocUpdate(row["position"], row["recorded_at"], base64.b64decode(row["update"]))


# A join the log skipped because the message that implied it is already stored (migration 0008).
SKIPPED: Literal["skipped"] = "skipped"


@dataclass
class _Outcome:
    # None: refused by the log's rule (migration 0006); SKIPPED: neither written nor refused.
    results: list[AppendResult | Literal["skipped"] | None]
    new: list[RecordedEvent]


async def append_batch(connection: asyncpg.Connection, events: Sequence[NewEvent]) -> _Outcome:
    """Append a batch with `append_events()` (migration 0003): one statement, one round trip.

    Called outside a transaction, the statement is its own transaction: the head lock is taken
    and released inside PostgreSQL. Called inside one, the lock is held until that commits.
    """
    return await _append_prepared(connection, [_Prepared.of(event) for event in events])


async def _append_prepared(connection: asyncpg.Connection, batch: list[_Prepared]) -> _Outcome:
    events = [item.event for item in batch]
    rows = await connection.fetch(
        "SELECT * FROM append_events($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])",
        [event.event_id for event in events],
        [event.stream for event in events],
        [event.type for event in events],
        [item.data for item in batch],
        [item.metadata for item in batch],
    )
    results: list[AppendResult | Literal["skipped"] | None] = []
    new: list[RecordedEvent] = []
    written: dict[uuid.UUID, RecordedEvent] = {}
    for event, row in zip(events, rows, strict=True):
        if row.get("refused"):
            results.append(None)
        elif row.get("skipped"):
            results.append(SKIPPED)
        elif not row["duplicate"]:
            recorded = RecordedEvent(
                position=row["position"],
                event_id=event.event_id,
                stream=event.stream,
                version=row["version"],
                type=event.type,
                data=event.data,
                metadata=event.metadata,
                recorded_at=row["recorded_at"],
            )
            written[event.event_id] = recorded
            new.append(recorded)
            results.append(AppendResult(recorded, duplicate=False))
        elif row["stream"] is not None:  # written by an earlier batch: as it was stored
            stored = record({**row, "event_id": event.event_id})
            results.append(AppendResult(stored, duplicate=True))
        else:  # repeated inside this batch: its first occurrence
            results.append(AppendResult(written[event.event_id], duplicate=True))
    return _Outcome(results, new)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _connection: event.set()


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    # A submitter that went away (its connection closed) never reads its future's error.
    if not future.cancelled():
        future.exception()


def _fail(request: _Request, error: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(error)
