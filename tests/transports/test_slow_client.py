"""A client that stops reading is dropped with 1013, never waited for, and resumes from the log.

The slow client connects with a small `max_queue`: the websockets client stops reading from its
socket once that many frames wait, so the kernel buffers fill, then the server's transport, then
the connection's outbound queue (`outbound_queue_size`), which is when the server gives up on it.
Compression is off so that the large messages fill buffers as large messages do.

The sender never runs more than WINDOW messages ahead of the fast client: if the server held the
room back for the slow client, the burst would stall and the test time out. The slow client
reads nothing until the fast one has every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.client import Client
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio

ROOM = "r"
PAYLOAD_CHARS = 16_000
QUEUE = 64  # the server's outbound queue per connection, in envelopes
QUEUE_BYTES = 1024 * 1024  # ... and in bytes (the default): room for WINDOW of these messages
WINDOW = 32  # the sender never runs further ahead of the readers than this (< QUEUE)
MAX_MESSAGES = 3000  # a few hundred fill the buffers of a loopback connection (~4 MB)
AFTER_THE_DROP = 200  # sent once the server has dropped the slow client
LIVE = 100  # sent while the dropped client comes back
BACKLOG = 500  # missed by a client while away: more than the socket buffers and the queue hold
BUSY = 300  # sent, BUSY_PAUSE apart, while that client comes back
BUSY_PAUSE = 0.003
READ_PAUSE = 0.0005  # readers of up to 2000 messages/s, in a room of at most ~300/s
TIMEOUT = 30.0
DROPPED_METRIC = "productflo_slow_clients_closed_total"


async def _join(client: Client, room: str) -> dict[str, Any]:
    """Client.join with this module's patience (a commit on a loaded machine can take a while)."""
    await client.send({"code": "join", "room_id": room})
    return await client.recv_until(
        lambda m: (
            m["code"] == "system"
            and m["room_id"] == room
            and m["data"].get("details", {}).get("action") == "join"
            and m["user_id"] == client.user_id
        ),
        TIMEOUT,
    )


def _chats(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["code"] == "chat_response"]


async def _clients_dropped(http: httpx.AsyncClient) -> float:
    """The server's count of connections closed 1013 (GET /metrics)."""
    response = await http.get("/metrics")
    for line in response.text.splitlines():
        if line.startswith(DROPPED_METRIC + " "):
            return float(line.split()[1])
    raise AssertionError(f"{DROPPED_METRIC} not in /metrics")


@dataclass
class Reader:
    """Reads a client continuously in a task of its own, keeping what arrives."""

    client: Client
    pause: float = 0.0  # after each message: a reader with a speed of its own
    received: list[dict[str, Any]] = field(default_factory=list)
    chats: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(lambda _: self.progress.set())  # wakes wait_chats to raise
        return self

    async def _run(self) -> None:
        while True:
            message = await self.client.recv(TIMEOUT)
            self.received.append(message)
            if message["code"] == "chat_response":
                self.chats += 1
                self.progress.set()
            if self.pause:
                await asyncio.sleep(self.pause)

    async def wait_chats(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while self.chats < count:
                assert self.task is not None
                if self.task.done():
                    self.task.result()  # raises what stopped the reader
                    raise AssertionError("the reader stopped")
                self.progress.clear()
                await self.progress.wait()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, TimeoutError):
                await self.task


@dataclass
class Burst:
    """What a burst did while one member of the room was not reading."""

    server: ServerThread
    sent: int
    fast_ids: list[int]  # the chats' event ids, in the order the fast client received them
    slow_received: list[dict[str, Any]]  # what the slow client read once it read again
    slow_close_code: int | None


async def _burst_past_a_stalled_reader(server: ServerThread) -> Burst:
    url = server.ws + "/ws?user_id="
    slow = await Client.open(url + "slow", max_queue=4, compression=None)
    fast = await Client.open(url + "fast", compression=None)
    sender = await Client.open(url + "sender", compression=None)
    readers: list[Reader] = []
    try:
        for client in (slow, fast, sender):
            await _join(client, ROOM)
        fast_reader = Reader(fast).start()
        sender_reader = Reader(sender).start()  # the sender reads its acks: it is not slow
        readers += [fast_reader, sender_reader]

        # Send until the server has dropped the slow client, then some more: those are missed
        # for certain. The slow client reads nothing meanwhile.
        async with httpx.AsyncClient(base_url=server.http) as http:
            dropped_before = await _clients_dropped(http)
            sent, stop_at = 0, MAX_MESSAGES
            while sent < stop_at:
                if sent - min(fast_reader.chats, sender_reader.chats) >= WINDOW:
                    await fast_reader.wait_chats(sent - WINDOW + 1)
                    await sender_reader.wait_chats(sent - WINDOW + 1)
                await sender.chat(ROOM, f"{sent} {secrets.token_hex(PAYLOAD_CHARS // 2)}")
                sent += 1
                if stop_at == MAX_MESSAGES and sent % 50 == 0:
                    if await _clients_dropped(http) > dropped_before:
                        stop_at = sent + AFTER_THE_DROP
            assert stop_at < MAX_MESSAGES, f"the slow client was not dropped after {sent}"

        # The fast client got every message while the slow one still was not reading.
        await fast_reader.wait_chats(sent)
        await sender_reader.wait_chats(sent)
        fast_chats = _chats(fast_reader.received)
        assert [int(m["data"]["message"].split()[0]) for m in fast_chats] == list(range(sent))
        assert [m["user_id"] for m in fast_chats] == ["sender"] * sent

        # Now the slow client reads again: what was buffered for it, then the close frame.
        slow_received: list[dict[str, Any]] = []
        code: int | None = None
        try:
            while True:
                slow_received.append(await slow.recv(TIMEOUT))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        return Burst(server, sent, [m["event_id"] for m in fast_chats], slow_received, code)
    finally:
        for reader in readers:
            await reader.stop()
        for client in (slow, fast, sender):
            await client.close()


@pytest.fixture
async def burst(start_server: Callable[..., ServerThread]) -> AsyncIterator[Burst]:
    server = start_server(outbound_queue_size=QUEUE, rate_limit=100_000)
    yield await _burst_past_a_stalled_reader(server)


async def test_a_client_that_stops_reading_is_closed_1013_while_a_fast_one_keeps_pace(
    burst: Burst,
) -> None:
    assert burst.slow_close_code == 1013
    ids = burst.fast_ids
    assert ids == sorted(ids) and len(set(ids)) == burst.sent
    # It got what was already on its way, in order, without a gap, and then nothing more: the
    # server dropped it instead of holding the room back or buffering without bound.
    slow_ids = [m["event_id"] for m in _chats(burst.slow_received)]
    assert 0 < len(slow_ids) <= burst.sent - AFTER_THE_DROP, len(slow_ids)
    assert slow_ids == ids[: len(slow_ids)]


async def test_the_outbound_queue_is_bounded_in_bytes_as_well_as_in_envelopes(
    start_server: Callable[..., ServerThread],
) -> None:
    """With room for 100,000 envelopes, a stalled reader is still dropped once what waits for
    it passes PRODUCTFLO_OUTBOUND_QUEUE_BYTES: a few dozen of these messages, not 100,000."""
    server = start_server(
        outbound_queue_size=100_000, outbound_queue_bytes=QUEUE_BYTES, rate_limit=100_000
    )
    burst = await _burst_past_a_stalled_reader(server)
    assert burst.slow_close_code == 1013
    slow_ids = [m["event_id"] for m in _chats(burst.slow_received)]
    assert slow_ids == burst.fast_ids[: len(slow_ids)]


async def test_after_1013_the_client_resumes_from_its_last_event_id_exactly_once(
    burst: Burst,
) -> None:
    assert burst.slow_close_code == 1013
    last = max(m["event_id"] for m in burst.slow_received if "event_id" in m)
    missed = [i for i in burst.fast_ids if i > last]
    assert len(missed) >= AFTER_THE_DROP

    # The room goes on while the client comes back: of these, some are committed before it is
    # back (replayed), some while the replay is being sent (held back, then sent), some after.
    sender = await Client.open(burst.server.ws + "/ws?user_id=sender", compression=None)
    sender_reader = Reader(sender).start()

    async def keep_sending() -> None:
        for n in range(LIVE):
            await sender.chat(ROOM, f"live {n}")
            await asyncio.sleep(0.002)

    sending = asyncio.create_task(keep_sending())
    url = burst.server.ws + f"/ws?user_id=slow&last_event_id={last}"
    again: Client | None = None
    try:
        await sender_reader.wait_chats(LIVE // 5)
        again = await Client.open(url, compression=None)
        received: list[dict[str, Any]] = []
        complete: dict[str, Any] | None = None
        replayed = 0
        while not received or received[-1]["data"].get("message") != f"live {LIVE - 1}":
            message = await again.recv(TIMEOUT)
            if message["data"].get("details", {}).get("replay_complete"):
                assert complete is None, "one replay_complete"
                complete = message
                replayed = len(received)
            else:
                received.append(message)
        await sending
        await sender_reader.wait_chats(LIVE)
        assert await again.nothing_within(0.5), "nothing twice"
    finally:
        sending.cancel()
        await sender_reader.stop()
        await sender.close()
        if again is not None:
            await again.close()

    live = [m["event_id"] for m in _chats(sender_reader.received)]
    assert [m["event_id"] for m in received] == missed + live, "each once, in order, no gap"
    assert all(m["code"] == "chat_response" for m in received)
    assert complete is not None and complete["data"]["details"]["truncated"] is False
    seam = complete["data"]["details"]["last_event_id"]
    assert all(m["event_id"] <= seam for m in received[:replayed])
    assert all(m["event_id"] > seam for m in received[replayed:])


async def test_a_client_resuming_into_a_busy_room_is_not_dropped_when_its_replay_ends(
    start_server: Callable[..., ServerThread],
) -> None:
    """A long replay must leave the queue room for the live events that follow it: a client
    that reads as fast as the one that never left is not closed 1013 for having been away."""
    server = start_server(outbound_queue_size=QUEUE, rate_limit=100_000)
    url = server.ws + "/ws?user_id="
    steady = await Client.open(url + "steady", compression=None)
    sender = await Client.open(url + "sender", compression=None)
    away = await Client.open(url + "away", compression=None)
    readers: list[Reader] = []
    back: Client | None = None
    busy: asyncio.Task[None] | None = None
    try:
        for client in (steady, sender):
            await _join(client, ROOM)
        last = (await _join(away, ROOM))["event_id"]
        await away.close()
        # Both read at the same speed, well above the room's rate once the backlog is out.
        steady_reader = Reader(steady, pause=READ_PAUSE).start()
        sender_reader = Reader(sender).start()
        readers += [steady_reader, sender_reader]
        payload = secrets.token_hex(PAYLOAD_CHARS // 2)
        sent = 0

        async def send(count: int, pause: float) -> None:
            nonlocal sent
            for _ in range(count):
                if sent - min(steady_reader.chats, sender_reader.chats) >= WINDOW:
                    await steady_reader.wait_chats(sent - WINDOW + 1)
                    await sender_reader.wait_chats(sent - WINDOW + 1)
                await sender.chat(ROOM, f"{sent} {payload}")
                sent += 1
                await asyncio.sleep(pause)

        await send(BACKLOG, 0)
        await steady_reader.wait_chats(BACKLOG)
        busy = asyncio.create_task(send(BUSY, BUSY_PAUSE))
        back = await Client.open(url + f"away&last_event_id={last}", compression=None)
        back_reader = Reader(back, pause=READ_PAUSE).start()
        readers.append(back_reader)
        await busy
        await steady_reader.wait_chats(BACKLOG + BUSY)
        await back_reader.wait_chats(BACKLOG + BUSY)  # raises the 1013 if it was dropped
    finally:
        if busy is not None:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
        for reader in readers:
            await reader.stop()
        for client in (steady, sender, away, *([back] if back else [])):
            await client.close()

    ids = [m["event_id"] for m in _chats(steady_reader.received)]
    assert [m["event_id"] for m in _chats(back_reader.received)] == ids
