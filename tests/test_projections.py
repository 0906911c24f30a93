"""Projections: what the live runners build equals a rebuild from the log; nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import pytest

from productflo import consumers
from productflo.auth import mint
from productflo.consumers import Runner, Transactional
from productflo.database import DatabaseUrl
from productflo.events.models import RecordedEvent
from productflo.events.store import EventStore
from productflo.projections import PROJECTIONS
from productflo.projections.framework import Connection, rebuild, rebuild_all
from productflo.projections.messages import Messages
from tests.client import Client
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio


async def _snapshot(url: DatabaseUrl) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projection table, in a stable order."""
    connection = await asyncpg.connect(url.dsn)
    try:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for projection in PROJECTIONS.values():
            for table in projection.tables:
                rows = await connection.fetch(f"SELECT * FROM {table}")
                tables[table] = sorted(tuple(str(v) for v in row.values()) for row in rows)
        return tables
    finally:
        await connection.close()


async def _caught_up(url: DatabaseUrl) -> None:
    """Return once every projection, and the mentions handler, has read the whole log.

    The handler appends the notifications a batch of chats causes before it moves its
    checkpoint: once it is at the head, in the same snapshot as the projections, nothing more is
    coming. (The projections alone at the head can be followed by a mention's notification.)
    """
    connection = await asyncpg.connect(url.dsn)
    try:
        async with asyncio.timeout(30):
            while await connection.fetchval(
                "SELECT count(*) FROM projection_checkpoints, log_head "
                "WHERE projection_checkpoints.position < log_head.position "
                "AND (name NOT LIKE 'handler:%' OR name = 'handler:mentions')"
            ):
                await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def _conversation(connect: Any) -> None:
    """Joins, leaves, rejoins, chats and mentions over several rooms and users."""
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    carol = await connect("/ws?user_id=carol")
    await bob.join("design")
    await carol.join("design")
    for n in range(30):
        await alice.chat("design", f"design note {n} @bob")
        await bob.chat("ops", f"ops note {n}")
    await carol.send({"code": "leave", "room_id": "design"})
    await carol.send("not json")  # rejected: no projection row of it
    # Each connection's messages are committed in the order it sent them: an answer that comes
    # back from the log means everything that connection sent before it is in the log too.
    await carol.join("design")
    await bob.send({"code": "leave", "room_id": "ops"})
    await alice.chat("design", "last word @carol")
    await alice.recv_until(lambda m: m.get("data", {}).get("message") == "last word @carol")
    await bob.recv_until(
        lambda m: (
            m["code"] == "system"
            and m["user_id"] == "bob"
            and m["data"].get("details", {}).get("action") == "leave"
        )
    )


@pytest.mark.parametrize("passes", ["one pass per projection", "one pass for all"])
async def test_a_rebuild_gives_exactly_the_rows_the_live_runners_built(
    connect: Any, server: ServerThread, passes: str
) -> None:
    await _conversation(connect)
    await _caught_up(server.database)
    live = await _snapshot(server.database)
    assert len(live["messages"]) > 60 and live["rooms"] and live["notifications"]

    store = EventStore(server.database.dsn)
    await store.start()
    reached: list[int] = []

    def progress(position: int, head: int) -> None:
        reached.append(position)

    try:
        if passes == "one pass for all":
            await rebuild_all(store, list(PROJECTIONS.values()), progress)
        else:
            for projection in PROJECTIONS.values():
                await rebuild(store, projection, progress)
    finally:
        await store.close()
    assert await _snapshot(server.database) == live
    # The log is shorter than one read batch: each pass over it reports progress once.
    assert len(reached) == (1 if passes == "one pass for all" else len(PROJECTIONS)), reached


async def test_a_message_sent_during_a_rebuild_is_in_history_afterwards(
    connect: Any, server: ServerThread
) -> None:
    await _conversation(connect)
    alice = await connect("/ws?user_id=alice")
    sent: list[int] = []

    async def during(position: int, head: int) -> None:
        await alice.chat("design", "said during the rebuild")
        ack = await alice.recv_until(
            lambda m: m.get("data", {}).get("message") == "said during the rebuild"
        )
        sent.append(ack["event_id"])

    store = EventStore(server.database.dsn)
    await store.start()
    try:
        tasks: list[asyncio.Task[None]] = []
        await rebuild(
            store,
            PROJECTIONS["messages"],
            lambda position, head: (
                tasks.append(asyncio.ensure_future(during(position, head))) if not tasks else None
            ),
        )
        await asyncio.gather(*tasks)
    finally:
        await store.close()
    assert sent
    await _caught_up(server.database)
    headers = {"Authorization": f"Bearer {mint(server.settings, 'reader')}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        page = (await http.get("/rooms/design/messages", params={"limit": 5})).json()
    assert sent[0] in [e["event_id"] for e in page["events"]]
    connection = await asyncpg.connect(server.database.dsn)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM messages WHERE position = $1", sent[0]
        )
    finally:
        await connection.close()
    assert stored == 1


class FailsOnce(Messages):
    """Writes its rows, then dies before the batch commits: the crash between the two."""

    def __init__(self) -> None:
        self.failed = False

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        await super().apply(connection, events, suffix)
        if not self.failed:
            self.failed = True
            raise ConnectionResetError("the process died here")


async def test_a_crash_between_an_event_and_its_projection_repeats_and_loses_nothing(
    connect: Any, server: ServerThread
) -> None:
    await _conversation(connect)
    await _caught_up(server.database)
    expected = (await _snapshot(server.database))["messages"]

    store = EventStore(server.database.dsn)
    await store.start()
    connection = await asyncpg.connect(server.database.dsn)
    try:
        # Start the messages projection over from nothing, as a process whose tables are empty.
        await connection.execute("DELETE FROM messages")
        await connection.execute(
            "UPDATE projection_checkpoints SET position = 0 WHERE name = 'messages'"
        )
        projection = FailsOnce()
        runner = Runner(store, projection, poll_interval=0.05)
        await runner.start()
        try:
            await _caught_up(server.database)
        finally:
            await runner.stop()
        assert projection.failed
    finally:
        await connection.close()
        await store.close()
    assert (await _snapshot(server.database))["messages"] == expected


def _admin_headers(server: ServerThread, admin: bool = True) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(server.settings, 'ops', admin=admin)}"}


async def test_admin_projection_status_and_rebuild_over_http(
    connect: Any, server: ServerThread
) -> None:
    await _conversation(connect)
    await _caught_up(server.database)
    live = await _snapshot(server.database)
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/admin/projections")).status_code == 401
        forbidden = await http.get("/admin/projections", headers=_admin_headers(server, False))
        assert forbidden.status_code == 403
        status = (await http.get("/admin/projections", headers=_admin_headers(server))).json()
        assert {p["name"] for p in status["projections"]} == set(PROJECTIONS)
        assert all(p["lag"] == 0 and not p["rebuilding"] for p in status["projections"])

        started = await http.post(
            "/admin/projections/messages/rebuild", headers=_admin_headers(server)
        )
        assert started.status_code == 202
        async with asyncio.timeout(15):
            while True:
                status = (
                    await http.get("/admin/projections", headers=_admin_headers(server))
                ).json()
                if not any(p["rebuilding"] for p in status["projections"]):
                    break
                await asyncio.sleep(0.05)
        missing = await http.post("/admin/projections/nope/rebuild", headers=_admin_headers(server))
        assert missing.status_code == 404
    assert await _snapshot(server.database) == live


def test_the_cli_shows_status_and_rebuilds_with_progress(
    server: ServerThread, tmp_path: Any
) -> None:
    import subprocess
    import sys
    from pathlib import Path

    productflo = str(Path(sys.executable).with_name("productflo"))
    env = {
        "PATH": "/usr/bin:/bin",
        "PRODUCTFLO_DATABASE_URL": server.database.dsn,
        "PRODUCTFLO_DATA_DIR": str(tmp_path),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [productflo, "projections", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    status = run("status")
    assert status.returncode == 0, status.stderr
    for name in [*PROJECTIONS, "handler:mentions", "handler:ai"]:
        assert name in status.stdout
    rebuilt = run("rebuild", "rooms", "messages")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rooms, messages: rebuilt from" in rebuilt.stdout and "events/s" in rebuilt.stdout
    assert "messages" in rebuilt.stderr  # the progress bar
    unknown = run("rebuild", "nope")
    assert unknown.returncode == 2 and "unknown projection nope" in unknown.stderr


class HeldBatch(Transactional):
    """A consumer of its own (no tables) whose first batch waits inside its transaction until
    the test lets it go."""

    name = "test:held"

    def __init__(self) -> None:
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        self.applied: list[int] = []
        self.cancelled = False

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        self.inside.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.applied.extend(event.position for event in events)


@contextlib.asynccontextmanager
async def _held_runner(server: ServerThread, consumer: HeldBatch) -> AsyncIterator[Runner]:
    """A runner of `consumer`, started over a short conversation, once inside its first batch."""
    await _conversation_of_three(server)
    store = EventStore(server.database.dsn)
    await store.start()
    try:
        runner = Runner(store, consumer, poll_interval=0.05)
        await runner.start()
        async with asyncio.timeout(30):
            await consumer.inside.wait()
        yield runner
    finally:
        await store.close()


async def _conversation_of_three(server: ServerThread) -> None:
    alice = await Client.open(server.ws + "/ws?user_id=alice")
    try:
        for n in range(3):
            await alice.chat("design", f"note {n}")
            await alice.recv_code("chat_response")
    finally:
        await alice.close()


async def _checkpoint_of(server: ServerThread, name: str) -> int:
    connection = await asyncpg.connect(server.database.dsn)
    try:
        position: int = await connection.fetchval(
            "SELECT position FROM projection_checkpoints WHERE name = $1", name
        )
        return position
    finally:
        await connection.close()


async def test_a_stopping_runner_commits_the_batch_in_hand_and_stops_at_its_checkpoint(
    server: ServerThread,
) -> None:
    consumer = HeldBatch()
    async with _held_runner(server, consumer) as runner:
        stopping = asyncio.create_task(runner.stop())
        await asyncio.sleep(0)  # the stop has begun: it waits for the batch, not cancels it
        consumer.release.set()
        await stopping
        assert not consumer.cancelled
        assert consumer.applied, "the batch in hand was finished"
        assert runner.position == consumer.applied[-1]
        assert await _checkpoint_of(server, consumer.name) == consumer.applied[-1]


async def test_a_batch_that_outlasts_the_stop_grace_is_rolled_back(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "STOP_GRACE_SECONDS", 0.2)
    consumer = HeldBatch()  # never released
    async with _held_runner(server, consumer) as runner:
        await runner.stop()
        assert consumer.cancelled and not consumer.applied
        assert await _checkpoint_of(server, consumer.name) == 0
