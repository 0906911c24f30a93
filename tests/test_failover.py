"""Failover to a synchronous hot standby under two `productflo serve` processes.

Each test builds its own primary and standby on loopback (tests/replication.py), gives the servers
`PRODUCTFLO_DATABASE_URL` naming both hosts with `target_session_attrs=read-write`, kills the
primary's postmaster with -9 and promotes the standby: what was acknowledged survives, clients
resume with everything once and in order, and the log's consumers go on from their checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from productflo import migrate
from productflo.audience import HISTORY_TYPES
from productflo.database import DatabaseUrl
from productflo.events.models import room_stream
from tests import replication, test_processes
from tests.client import Client
from tests.test_cli import run
from tests.test_processes import TIMEOUT, _environment, _ready, _stored_chats

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOM = "failover"
STREAM = room_stream(ROOM)
RETRY = 0.05  # how soon a client sends a refused message again
launch = test_processes.launch  # the fixture: server processes, killed at the end
ALEMBIC = str(Path(sys.executable).with_name("alembic"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def pair() -> AsyncIterator[replication.Pair]:
    """A migrated primary with a synchronous standby streaming from it."""
    with replication.primary_and_standby() as pair:
        await replication.wait_for_synchronous_standby(pair.primary)
        await replication.create_database(pair)
        await asyncio.to_thread(migrate.upgrade, pair.url())
        yield pair


class Chatter:
    """A client that keeps talking through a failover, as the SPEC asks clients to: one message
    in flight, sent again with the same client_msg_id until acknowledged, and after a lost
    connection a new one with last_event_id, the last event it received."""

    def __init__(self, ws: str, user: str) -> None:
        self.ws, self.user = ws, user
        self.client: Client | None = None
        self.received: list[dict[str, Any]] = []  # chat_response envelopes, as they came
        self.acked: dict[str, int] = {}
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledgement
        self.refused: list[str] = []
        self.resent: set[str] = set()
        self.reconnections = 0

    async def open(self) -> None:
        query = f"user_id={self.user}"
        if self.received:
            query += f"&last_event_id={self.received[-1]['event_id']}"
        self.client = await Client.open(f"{self.ws}/ws?{query}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def join(self, room: str) -> None:
        await self._until_acked({"code": "join", "room_id": room, "client_msg_id": "join"})

    async def chat(self, room: str, text: str, client_msg_id: str) -> dict[str, Any]:
        envelope = {"code": "chat", "room_id": room, "data": {"message": text}}
        return await self._until_acked(envelope | {"client_msg_id": client_msg_id})

    async def ask(self, room: str, code: str, text: str, client_msg_id: str) -> dict[str, Any]:
        envelope = {"code": code, "room_id": room, "data": {"message": text}}
        return await self._until_acked(envelope | {"client_msg_id": client_msg_id})

    async def _until_acked(self, envelope: dict[str, Any]) -> dict[str, Any]:
        client_msg_id = envelope["client_msg_id"]
        async with asyncio.timeout(TIMEOUT * 2):
            while True:
                try:
                    assert self.client is not None
                    await self.client.send(envelope)
                    answer = await self._answer_to(client_msg_id)
                except ConnectionClosed:
                    self.reconnections += 1
                    await self.open()
                    answer = None
                if answer is not None and answer.get("status") != "error":
                    self.acked[client_msg_id] = answer["event_id"]
                    self.acked_at.append(time.monotonic())
                    return answer
                if answer is not None:
                    code = answer["data"]["details"]["error_code"]
                    assert code == "FAILED_TO_PROCESS_MESSAGE", answer
                    self.refused.append(client_msg_id)
                self.resent.add(client_msg_id)
                await asyncio.sleep(RETRY)

    async def _answer_to(self, client_msg_id: str) -> dict[str, Any]:
        """Read (keeping every chat) until the server answers this message: ack or refusal."""
        while True:
            message = await self._recv(TIMEOUT)
            if message.get("client_msg_id") == client_msg_id and "event_id" in message:
                return message
            if message.get("client_msg_id") == client_msg_id and message["status"] == "error":
                return message

    async def _recv(self, timeout: float) -> dict[str, Any]:
        assert self.client is not None
        message = await self.client.recv(timeout)
        if message["code"] == "chat_response":
            self.received.append(message)
        return message

    async def read_until_received(self, positions: list[int]) -> None:
        """Read until every one of these events has come (the chats of others, late)."""
        async with asyncio.timeout(TIMEOUT):
            while not set(positions) <= {m["event_id"] for m in self.received}:
                try:
                    await self._recv(TIMEOUT)
                except ConnectionClosed:
                    self.reconnections += 1
                    await self.open()

    def deliveries(self) -> list[int]:
        """The events received, less the answers to a resend of what had come already."""
        seen: set[int] = set()
        delivered = []
        for message in self.received:
            event_id = message["event_id"]
            if event_id in seen and message.get("client_msg_id") in self.resent:
                continue
            seen.add(event_id)
            delivered.append(event_id)
        return delivered


async def _fetch(database: DatabaseUrl, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database.dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def _fail_over(pair: replication.Pair) -> float:
    """kill -9 the primary's postmaster, promote the standby; the time promotion began."""
    await asyncio.to_thread(pair.primary.kill)
    promoted_at = time.monotonic()
    await asyncio.to_thread(pair.standby.promote)
    return promoted_at


async def _alice_and_bob_in_the_room(
    launch: Any, pair: replication.Pair, tmp_path: Path
) -> tuple[tuple[Any, Any], Chatter, Chatter]:
    """Two servers given both hosts; alice on one, bob on the other, both members of ROOM."""
    env = _environment(pair.url(), tmp_path)
    one, two = launch(env, "--no-migrate"), launch(env, "--no-migrate")
    await _ready(one, two)
    alice, bob = Chatter(one.ws, "alice"), Chatter(two.ws, "bob")
    for chatter in (alice, bob):
        await chatter.open()
        await chatter.join(ROOM)
    return (one, two), alice, bob


async def test_a_conversation_goes_on_through_failover_with_nothing_acknowledged_lost(
    launch: Any, pair: replication.Pair, tmp_path: Path
) -> None:
    (one, two), alice, bob = await _alice_and_bob_in_the_room(launch, pair, tmp_path)
    total = 60
    try:

        async def talk(chatter: Chatter) -> None:
            for n in range(total):
                await chatter.chat(ROOM, f"{chatter.user} {n}", f"{chatter.user}-{n}")

        talking = [asyncio.create_task(talk(alice)), asyncio.create_task(talk(bob))]
        async with asyncio.timeout(TIMEOUT):
            while len(alice.acked) + len(bob.acked) < 2 + 30:  # the joins, then 30 chats
                await asyncio.sleep(0.01)
        before = len(alice.acked) + len(bob.acked)
        promoted_at = await _fail_over(pair)
        await asyncio.gather(*talking)

        first_ack = min(t for t in alice.acked_at + bob.acked_at if t > promoted_at)
        print(f"promotion to first acknowledgement: {first_ack - promoted_at:.3f} s")
        assert before < 2 + 2 * total, "the primary died mid-conversation"
        assert alice.refused or bob.refused, "some messages met the outage"

        stored = await _stored_chats(pair.standby.url())
        positions = [row["position"] for row in stored]
        await alice.read_until_received(positions)
        await bob.read_until_received(positions)
    finally:
        await alice.close()
        await bob.close()

    expected = sorted(f"{user}-{n}" for user in ("alice", "bob") for n in range(total))
    assert sorted(row["client_msg_id"] for row in stored) == expected, "each stored once"
    by_id = {row["client_msg_id"]: row["position"] for row in stored}
    for chatter in (alice, bob):
        for client_msg_id, event_id in chatter.acked.items():
            if client_msg_id != "join":
                assert by_id[client_msg_id] == event_id, f"{client_msg_id} as acknowledged"
        # A resend is answered with the original event at once (protocol.md, Idempotency), so
        # that copy may come ahead of the log's order: those events are checked to have come,
        # every other chat to have come once, in log order.
        resent = {by_id[c] for c in chatter.resent if c in by_id}
        in_order = [p for p in chatter.deliveries() if p not in resent]
        assert in_order == [p for p in positions if p not in resent], f"{chatter.user}: in order"
        assert resent <= set(chatter.deliveries()), f"{chatter.user}: every resent chat came"
    assert await asyncio.to_thread(one.stop) and await asyncio.to_thread(two.stop)


async def test_with_no_primary_messages_are_refused_and_all_recover_after_promotion(
    launch: Any, pair: replication.Pair, tmp_path: Path
) -> None:
    env = _environment(pair.url(), tmp_path)
    one, two = launch(env, "--no-migrate"), launch(env, "--no-migrate")
    await _ready(one, two)
    alice = await Client.open(one.ws + "/ws?user_id=alice")
    bob = await Client.open(two.ws + "/ws?user_id=bob")
    http = httpx.AsyncClient(timeout=TIMEOUT)
    try:
        await bob.join(ROOM)
        await alice.chat(ROOM, "before", client_msg_id="before")
        ack = await alice.recv_code("chat_response", TIMEOUT)
        assert await bob.recv_code("chat_response", TIMEOUT) == ack

        await asyncio.to_thread(pair.primary.kill)
        during = [f"during-{n}" for n in range(3)]
        for client, sent in ((alice, during[:2]), (bob, during[2:])):
            for client_msg_id in sent:
                await client.chat(ROOM, client_msg_id, client_msg_id=client_msg_id)
                refusal = await client.recv(TIMEOUT)
                assert refusal["status"] == "error", refusal
                assert refusal["data"]["details"]["error_code"] == "FAILED_TO_PROCESS_MESSAGE"
                assert refusal["client_msg_id"] == client_msg_id
        assert await alice.nothing_within(1.0) and await bob.nothing_within(0.1)
        for server in (one, two):
            assert (await http.get(f"{server.url}/readyz")).status_code == 503
            assert (await http.get(f"{server.url}/healthz")).status_code == 200
            assert server.alive()
        # The standby, still read-only, holds none of them.
        assert [row["message"] for row in await _stored_chats(pair.standby.url())] == ["before"]

        await asyncio.to_thread(pair.standby.promote)
        for server in (one, two):
            async with asyncio.timeout(TIMEOUT):
                while (await http.get(f"{server.url}/readyz")).status_code != 200:
                    await asyncio.sleep(0.1)
        # The same processes and the same connections: both recovered by themselves.
        for client, sent in ((alice, during[:2]), (bob, during[2:])):
            for client_msg_id in sent:
                await client.chat(ROOM, client_msg_id, client_msg_id=client_msg_id)
                ack = await client.recv(TIMEOUT)
                assert (ack["code"], ack["client_msg_id"]) == ("chat_response", client_msg_id)
                other = bob if client is alice else alice
                assert await other.recv_code("chat_response", TIMEOUT) == ack
    finally:
        await http.aclose()
        await alice.close()
        await bob.close()
    stored = await _stored_chats(pair.standby.url())
    assert [row["message"] for row in stored] == ["before", *during]
    assert await asyncio.to_thread(one.stop) and await asyncio.to_thread(two.stop)


async def test_consumers_go_on_from_their_checkpoints_on_the_new_primary(
    launch: Any, pair: replication.Pair, tmp_path: Path
) -> None:
    """The messages projection, the mentions handler and the assistant (offline provider):
    one notification per mention, one answer per request, none skipped, none given twice."""
    _, alice, bob = await _alice_and_bob_in_the_room(launch, pair, tmp_path)
    per_side = 8
    try:

        async def burst(side: str) -> None:
            for n in range(per_side):
                await alice.chat(ROOM, f"@bob look at {side} {n}", f"mention-{side}-{n}")
                await bob.ask(ROOM, "idea", f"an idea {side} {n}", f"idea-{side}-{n}")

        await burst("before")
        await asyncio.to_thread(pair.primary.kill)
        behind = await _fetch(
            pair.standby.url(),
            "SELECT name FROM projection_checkpoints"
            " WHERE position < (SELECT max(position) FROM events)",
        )
        assert behind, "the kill was meant to find the consumers at work"
        await asyncio.to_thread(pair.standby.promote)
        await burst("after")
    finally:
        await alice.close()
        await bob.close()

    new_primary = pair.standby.url()
    await _until_every_consumer_is_at_the_head(new_primary)
    requests = {bob.acked[f"idea-{s}-{n}"] for s in ("before", "after") for n in range(per_side)}
    answers = Counter(
        row["request"]
        for row in await _fetch(
            new_primary,
            "SELECT (data->'in_reply_to'->>'event_id')::bigint AS request FROM events"
            " WHERE type = 'idea_response'",
        )
    )
    assert set(answers) == requests, "every request answered"
    assert set(answers.values()) == {1}, "and once"

    mentions = await _fetch(
        new_primary,
        "SELECT event_id::text FROM events WHERE type = 'chat' AND data->>'message' LIKE '@bob%'",
    )
    notified = Counter(
        row["causation"]
        for row in await _fetch(
            new_primary,
            "SELECT metadata->>'causation_id' AS causation FROM events WHERE type = $1",
            "notification",
        )
    )
    assert len(mentions) == 2 * per_side
    assert notified == Counter({row["event_id"]: 1 for row in mentions}), "one per mention"
    await _messages_table_matches_the_log(new_primary)

    # The command line, with the dead primary still first in the URL.
    cli_env = _environment(pair.url(), tmp_path)
    status = await asyncio.to_thread(run, cli_env, "projections", "status")
    assert status.returncode == 0, status.stderr
    assert "messages" in status.stdout
    audit = await asyncio.to_thread(
        run, cli_env, "audit", "--room", ROOM, "--limit", "1000", "--format", "jsonl"
    )
    assert audit.returncode == 0, audit.stderr
    logged = await _fetch(
        new_primary,
        "SELECT position FROM events WHERE stream = $1 ORDER BY position",
        STREAM,
    )
    printed = [json.loads(line)["event_id"] for line in audit.stdout.splitlines()]
    assert printed == [row["position"] for row in logged], "the room's events, both sides"


async def _until_every_consumer_is_at_the_head(database: DatabaseUrl) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            rows = await _fetch(
                database,
                """
                SELECT name, position, (SELECT max(position) FROM events) AS head
                FROM projection_checkpoints
                """,
            )
            if rows and all(row["position"] == row["head"] for row in rows):
                return
            await asyncio.sleep(0.1)


async def _messages_table_matches_the_log(database: DatabaseUrl) -> None:
    rows = await _fetch(
        database,
        """
        SELECT (SELECT array_agg(position ORDER BY position) FROM events
                WHERE stream LIKE 'room:%' AND type = ANY($1)) AS logged,
               (SELECT array_agg(position ORDER BY position) FROM messages) AS projected
        """,
        list(HISTORY_TYPES),
    )
    assert rows[0]["logged"] == rows[0]["projected"], "the messages table holds the log's"


async def test_the_cli_and_alembic_take_the_writable_host_of_several(
    pair: replication.Pair, tmp_path: Path
) -> None:
    """`alembic upgrade head`, `productflo projections status` and `productflo audit` given the
    standby first, then (after failover) the dead primary first."""
    for url in (pair.url(standby_first=True), None):
        if url is None:
            await _fail_over(pair)
            url = pair.url()
        env = _environment(url, tmp_path)
        done = await asyncio.to_thread(
            subprocess.run,
            [ALEMBIC, "upgrade", "head"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        for args in (("projections", "status"), ("audit", "--format", "jsonl")):
            done = await asyncio.to_thread(run, env, *args)
            assert done.returncode == 0, done.stderr
