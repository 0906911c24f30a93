"""The log's consumers, each kept up with the log from a checkpoint of its own by a Runner.

Two kinds run the same way:

- read models (productflo.projections) and the mentions handler apply a batch and move their
  checkpoint in one transaction (`Transactional`), so each event is applied exactly once: a crash
  in the middle rolls both back and the batch is applied again from the unchanged checkpoint.
  Every server process runs every one of them; they meet on the checkpoint row (`SELECT ... FOR
  UPDATE`): whoever comes second finds the batch already applied and skips it.
- the assistant (productflo.handlers.assistant) works on a request long after reading it, so it
  moves its checkpoint itself, past each request once its answer is in the log. It is
  `exclusive`: one process runs it at a time, the one holding a PostgreSQL advisory lock on a
  connection of its own. When that process dies, PostgreSQL drops the connection and the lock
  with it, and another process (or the restarted one) takes over from the checkpoint.

A runner that fails (the database went away, a batch failed) starts over from the checkpoint,
which the failed transaction did not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg

from productflo import metrics
from productflo.errors import StoreError
from productflo.events.checkpoints import (
    Connection,
    checkpoint,
    create_checkpoint,
    lock_checkpoint,
    move_checkpoint,
)
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore, connect
from productflo.events.tailer import Tailer

__all__ = [
    "FOLD_SECONDS",
    "Consumer",
    "Runner",
    "Transactional",
    "apply_batch",
    "ensure_tables",
]

log = logging.getLogger(__name__)

# Once caught up, a consumer reads the log at most this often (Tailer's `fold`). Woken by every
# commit, it would otherwise read and apply a few events per commit, a transaction and several
# round trips each time, and under moderate load that per-commit work dominates the server's CPU
# (bench/README.md). Waiting folds the commits of the interval into one batch; an idle log is
# still applied within the interval, and a consumer that is behind reads on without pausing.
FOLD_SECONDS = 0.05

# How long a stopping runner lets the batch in hand finish (and commit with its checkpoint)
# before it is cancelled, which rolls the batch back instead.
STOP_GRACE_SECONDS = 5.0


class Consumer(Protocol):
    """What a Runner runs."""

    name: str  # also its checkpoint's name
    exclusive: bool  # one process at a time (holding a lock), rather than every process

    async def prepare(self, store: EventStore) -> None:
        """Create what it needs (tables, its checkpoint row) unless the database has it."""
        ...

    async def resume(self, store: EventStore) -> int:
        """About to follow the log (again): the position to read on from, its checkpoint."""
        ...

    async def take(self, store: EventStore, events: Sequence[RecordedEvent]) -> int:
        """Handle `events` (in position order, gapless from the position last returned); the
        position to read on from."""
        ...

    async def abandon(self) -> None:
        """The runner stopped following (a failure, lost leadership, a stop): drop work in hand,
        which whoever follows next takes up again from the checkpoint."""
        ...


async def ensure_tables(connection: Connection, consumer: Transactional) -> None:
    """Create the live tables and the checkpoint row if this database has never had them."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", consumer.name)
        if await create_checkpoint(connection, consumer.name):
            for statement in consumer.create(""):
                await connection.execute(statement)


async def apply_batch(
    connection: Connection, consumer: Transactional, events: Sequence[RecordedEvent]
) -> int:
    """Apply what of `events` is past the checkpoint, with the checkpoint; return the new one."""
    async with connection.transaction():
        position = await lock_checkpoint(connection, consumer.name)
        fresh = [event for event in events if event.position > position]
        if fresh and fresh[0].position != position + 1:
            return position  # the checkpoint is behind this batch: read on from it instead
        if fresh:
            await consumer.apply(connection, fresh, "")
            position = fresh[-1].position
            await move_checkpoint(connection, consumer.name, position)
        return position


class Transactional:
    """A consumer that applies each batch and moves its checkpoint in one transaction. Subclasses
    name themselves and their tables and give `apply` (and `create`, when they have tables)."""

    name: str
    tables: tuple[str, ...] = ()
    exclusive = False

    def create(self, suffix: str) -> list[str]:
        """DDL for this consumer's tables, each name followed by `suffix`."""
        return []

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        """Fold events (in position order) into the tables named with `suffix`."""
        raise NotImplementedError

    async def prepare(self, store: EventStore) -> None:
        async with store.pool.acquire() as connection:
            await ensure_tables(connection, self)

    async def resume(self, store: EventStore) -> int:
        return await checkpoint(store.pool, self.name)

    async def take(self, store: EventStore, events: Sequence[RecordedEvent]) -> int:
        # Another process may have applied further ahead (skip it), or the checkpoint may be
        # behind what we read (read on from it): the checkpoint decides.
        async with store.pool.acquire() as connection:
            return await apply_batch(connection, self, events)

    async def abandon(self) -> None:
        """Nothing is in hand between transactions."""


class Runner:
    """Keeps one consumer up with the log, live, for as long as the process runs."""

    def __init__(self, store: EventStore, consumer: Consumer, poll_interval: float) -> None:
        self.store = store
        self.consumer = consumer
        self._poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self.position = 0
        self.following = False  # reading the log (an exclusive consumer: while it leads)
        self._unwatch_lag: Callable[[], None] | None = None
        self._stopping = False
        self._taking = False  # a batch is being handled: a stop lets it finish first

    async def start(self) -> None:
        await self.consumer.prepare(self.store)
        self._unwatch_lag = metrics.watch_lag(
            metrics.PROJECTION_LAG.labels(self.consumer.name), self._lag
        )
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.consumer.name}")

    async def stop(self) -> None:
        """Stop at a checkpoint: a batch in hand is finished and committed with its checkpoint
        (for up to STOP_GRACE_SECONDS), and no further batch is started. A runner waiting for
        the log, or one still busy after the grace, is cancelled: what it had not committed
        stays behind the checkpoint, for whoever follows next."""
        if self._unwatch_lag is not None:
            self._unwatch_lag()
        if self._task is None:
            return
        self._stopping = True
        if self._taking:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_SECONDS):
                    await asyncio.shield(self._task)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        log.info("%s stopped at position %d", self.consumer.name, self.position)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self.consumer.exclusive:
                    await self._lead()
                else:
                    await self._follow()
            except Exception:
                log.warning("%s: starting over from its checkpoint", self.consumer.name)
                log.debug("%s failed", self.consumer.name, exc_info=True)
                await asyncio.sleep(self._poll_interval)
            finally:
                await self.consumer.abandon()

    def _lag(self) -> int | None:
        """Positions behind the newest this process knows of; None where it does not run."""
        if not self.following:
            return None
        return max(0, self.store.recent.head - self.position)

    async def _follow(self) -> None:
        self.position = await self.consumer.resume(self.store)
        tailer = Tailer(
            self.store, self.position, poll_interval=self._poll_interval, fold=FOLD_SECONDS
        )
        self.following = True
        try:
            while not self._stopping:
                batch = await tailer.next_batch()
                if self._stopping:
                    break  # read but not handled: it stays behind the checkpoint
                self._taking = True
                try:
                    self.position = await self.consumer.take(self.store, batch)
                finally:
                    self._taking = False
                tailer.position = self.position
        finally:
            self.following = False
            tailer.close()

    async def _lead(self) -> None:
        """Follow while holding the consumer's lock; return when another process holds it or
        the database is away (the caller tries again), raise when the lock's connection is
        lost."""
        try:
            connection = await connect(self.store.dsn)
        except StoreError:
            await asyncio.sleep(self._poll_interval)
            return
        try:
            lock = f"productflo:{self.consumer.name}"
            if not await connection.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock):
                await asyncio.sleep(self._poll_interval)
                return
            log.info("%s runs in this process", self.consumer.name)
            tasks = [
                asyncio.create_task(self._follow(), name=f"consumer-{self.consumer.name}-follow"),
                asyncio.create_task(self._hold(connection), name=f"consumer-{self.consumer.name}"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises what ended it
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await connection.close()

    async def _hold(self, connection: asyncpg.Connection) -> None:
        """Return (so that _lead stops) as soon as the lock's connection is gone."""
        while True:
            await asyncio.sleep(max(1.0, self._poll_interval))
            # Not asyncio.wait_for, which on Python 3.11 can drop the cancellation that stops
            # this loop (productflo.events.tailer).
            async with asyncio.timeout(10):
                await connection.fetchval("SELECT 1")
