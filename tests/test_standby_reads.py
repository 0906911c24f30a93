"""Reads moved off the primary (SPEC section 2, PRODUCTFLO_DATABASE_READ_URL): a server that tails,
replays and pages history from a real hot standby keeps every rule of the log, each event once
and in order, with the standby's replay paused under it (a standby behind the primary)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from productflo import migrate
from tests import replication
from tests.client import Client
from tests.conftest import ServerThread

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOM = "standby"
TIMEOUT = 30.0


@pytest.fixture
async def pair() -> AsyncIterator[replication.Pair]:
    with replication.primary_and_standby() as pair:
        await replication.create_database(pair)
        await replication.wait_for_synchronous_standby(pair.primary)
        await asyncio.to_thread(migrate.upgrade, pair.primary.url())
        yield pair


@pytest.fixture
def servers(pair: replication.Pair, start_server: Any) -> Any:
    """`servers(read_from_standby)`: a real server on the pair's primary, its log's reads on
    the standby or not. Its poll interval is long: delivery must not wait for a poll."""

    def start(*, read_from_standby: bool) -> ServerThread:
        update: dict[str, Any] = {"poll_interval": 60.0}
        if read_from_standby:
            update["database_read_url"] = SecretStr(pair.standby.url().dsn)
        server: ServerThread = start_server(database=pair.primary.url(), **update)
        return server

    return start


async def _on(node: replication.Node, statement: str) -> Any:
    connection = await asyncpg.connect(node.url().dsn)
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


async def _read_only_backends(node: replication.Node) -> int:
    """Connections to the standby's database (the reading server's read pool)."""
    count: int = await _on(
        node, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    )
    return count - 1  # this one


async def _chat_ids(client: Client, count: int) -> list[int]:
    ids = []
    while len(ids) < count:
        message = await client.recv_code("chat_response", TIMEOUT)
        ids.append(message["event_id"])
    return ids


async def test_a_server_reading_from_a_lagging_standby_delivers_each_event_once_in_order(
    pair: replication.Pair, servers: Any
) -> None:
    writer = servers(read_from_standby=False)
    reader = servers(read_from_standby=True)
    assert await _read_only_backends(pair.standby) >= 1, "the reader's pool is on the standby"
    alice = await Client.open(writer.ws + "/ws?user_id=alice")
    bob = await Client.open(reader.ws + "/ws?user_id=bob")
    carol = await Client.open(reader.ws + "/ws?user_id=carol")
    try:
        for client in (alice, bob, carol):
            await client.join(ROOM)
        await alice.chat(ROOM, "before the pause")
        [first] = await _chat_ids(bob, 1)

        # The standby stops replaying: what alice sends on the other server is on the primary
        # only, and the reader delivers none of it yet.
        await _on(pair.standby, "SELECT pg_wal_replay_pause()")
        for n in range(10):
            await alice.chat(ROOM, f"while paused {n}")
        from_alice = (await _chat_ids(alice, 11))[1:]
        assert await bob.nothing_within(0.3), "bob read what the standby does not hold yet"
        # Replay resumes: delivery catches up by itself (no NOTIFY is left to come, and the
        # reader's poll is a minute away), each event once and in order.
        await _on(pair.standby, "SELECT pg_wal_replay_resume()")
        assert await _chat_ids(bob, 10) == from_alice

        # The reader's own commits go out at once, ahead of its standby ...
        await _on(pair.standby, "SELECT pg_wal_replay_pause()")
        for n in range(5):
            await carol.chat(ROOM, f"from the reader {n}")
        from_carol = await _chat_ids(bob, 5)
        # ... and a replay that reaches them, which the standby does not hold, is read from the
        # primary instead of missing them.
        await bob.close()
        bob = await Client.open(reader.ws + f"/ws?user_id=bob&last_event_id={from_alice[-1]}")
        assert await _chat_ids(bob, 5) == from_carol
        await _on(pair.standby, "SELECT pg_wal_replay_resume()")

        await bob.send({"code": "history", "room_id": ROOM, "data": {"limit": 50}})
        page = await bob.recv_code("history", TIMEOUT)
        chats = [e["event_id"] for e in page["data"]["events"] if e["code"] == "chat_response"]
        assert chats == [first, *from_alice, *from_carol]
    finally:
        for client in (alice, bob, carol):
            await client.close()
