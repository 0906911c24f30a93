"""GET /metrics as an operator reads it: each series moves with what clients do, one view of
every `--workers` process, and every series the Grafana dashboard draws exists.

Scrapes are parsed with prometheus_client's own text parser. The in-process servers share this
process's registry with every other test, so what is measured there is how a series moved."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from productflo.database import DatabaseUrl
from tests.ai.fake_openai import FakeOpenAI, fake_openai_fixture  # noqa: F401
from tests.ai.test_assistant import ask
from tests.client import Client
from tests.conftest import ServerThread
from tests.test_processes import Server, _environment, _ready, _workers, launch  # noqa: F401
from tests.transports.test_secure import token
from tests.transports.test_socketio import sio_connect  # noqa: F401

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
ROOM = "metrics-room"
DEADLINE = 20.0
# Labels Prometheus adds, or that a histogram's buckets carry: no series of ours names them.
_ADDED_LABELS = {"instance", "job", "le"}
_KINDS = (("native", "/ws"), ("native", "/ws/secure"), ("socketio", "/ws"))  # transport, endpoint

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value; a series that is not there fails the test, it does not read 0."""
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no series {name}{labels} in /metrics"
    return samples[key]


async def scrape(server: ServerThread) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.http}/metrics")
    assert response.status_code == 200
    return parse(response.text)


class Moves:
    """How series moved since a first scrape."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


async def eventually(
    server: ServerThread, base: Samples, holds: Callable[[Moves], bool], what: str
) -> Moves:
    """Scrape until `holds` (a series the server updates after the client saw the cause:
    a close it notices, a task's end); fail with `what` at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        moved = Moves(base, await scrape(server))
        if holds(moved):
            return moved
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _openai(fake: FakeOpenAI) -> dict[str, Any]:
    # A long timeout: a request held by the fake stays in flight until the fake is stopped.
    return {"ai_provider": "openai", "ai_base_url": fake.url, "ai_model": "m", "ai_timeout": 30.0}


@pytest.fixture
def server(start_server: Any, fake_openai: FakeOpenAI) -> ServerThread:
    """This module's server answers AI requests from the fake provider."""
    started: ServerThread = start_server(**_openai(fake_openai))
    return started


def _own_join(user_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m["code"] == "system"
        and m["data"].get("details", {}).get("action") == "join"
        and m["user_id"] == user_id
    )


# -- one server, one conversation -----------------------------------------------------------------


async def test_a_conversation_moves_each_series_as_a_user_would_expect(
    server: ServerThread,
    connect: Any,
    sio_connect: Any,  # noqa: F811 (the fixture, imported)
) -> None:
    base = await scrape(server)
    ann = await connect("/ws?user_id=ann")
    sam = await connect(f"/ws/secure?access_token={token(server, 'sam')}")
    sid = await sio_connect(headers={"User-ID": "sid"})
    assert (await sid.recv())["code"] == "system"  # the welcome: the session is open
    moved = Moves(base, await scrape(server))
    for transport, endpoint in _KINDS:
        assert moved("productflo_connections", transport=transport, endpoint=endpoint) == 1

    await ann.join(ROOM)  # first: a room first used from /ws/secure is closed to /ws
    joined = await sam.join(ROOM)
    await sid.emit({"code": "join", "room_id": ROOM})
    await sid.recv_until(_own_join("sid"))  # handed to ann and sam in the same dispatch

    before_chat = await scrape(server)
    await ann.chat(ROOM, "hello")
    said = await ann.recv_code("chat_response")
    await sam.recv_code("chat_response")
    await sid.recv_code_chat()
    moved = Moves(before_chat, await scrape(server))
    assert moved("productflo_deliveries_total") == 3  # ann, sam and sid each got the chat
    assert moved("productflo_events_appended_total") == 1

    await ann.send({"code": "bogus", "room_id": ROOM})
    assert (await ann.recv())["data"]["details"]["error_code"] == "UNSUPPORTED_MESSAGE_TYPE"
    await ann.send({"code": "chat", "data": {"message": "where?"}})
    assert (await ann.recv())["data"]["details"]["error_code"] == "ROOM_ID_REQUIRED"
    after = await scrape(server)
    moved = Moves(base, after)
    assert moved("productflo_inbound_messages_total", code="join") == 3
    assert moved("productflo_inbound_messages_total", code="chat") == 2  # the one refused too
    assert moved("productflo_inbound_messages_total", code="unknown") == 1
    assert moved("productflo_inbound_messages_total", code="history") == 0
    assert not [key for key in after if ("code", "bogus") in key[1]], "a client named a series"
    assert moved("productflo_messages_rejected_total", error_code="ROOM_ID_REQUIRED") == 1
    assert moved("productflo_messages_received_total", transport="socketio") == 1
    assert moved("productflo_messages_received_total", transport="native") == 5

    # Back after missing the chat: it is replayed, with sid's join before it.
    back = await connect(f"/ws?user_id=ann&last_event_id={joined['event_id']}")
    replayed = []
    async with asyncio.timeout(DEADLINE):
        while not (message := await back.recv())["data"].get("details", {}).get("replay_complete"):
            replayed.append(message["event_id"])
    assert said["event_id"] in replayed
    moved = Moves(after, await scrape(server))
    assert moved("productflo_replays_total") == 1
    assert moved("productflo_replayed_events_total") == len(replayed)

    forged = await connect("/ws/secure?access_token=not-a-token", expect_welcome=False)
    await forged.recv()
    assert await forged.closed_with() == 4401
    moved = Moves(after, await scrape(server))
    assert moved("productflo_closes_total", code="4401") == 1

    for client in (ann, sam, back):
        await client.close()
    await sid.sio.disconnect()

    def all_gone(moved: Moves) -> bool:
        return all(
            moved("productflo_connections", transport=transport, endpoint=endpoint) == 0
            for transport, endpoint in _KINDS
        )

    await eventually(server, base, all_gone, "connections stayed counted after their clients left")


async def test_relayed_signals_are_deliveries_too(server: ServerThread, connect: Any) -> None:
    """Typing and document awareness are never stored, but each one relayed is a delivery."""
    ann = await connect("/ws?user_id=ann")
    sam = await connect("/ws?user_id=sam")
    for client in (ann, sam):
        await client.join(ROOM)
        await client.send({"code": "doc_open", "room_id": ROOM, "data": {"doc_id": "notes"}})
        await client.recv_code("doc_sync")
    before = await scrape(server)
    await ann.send({"code": "typing", "room_id": ROOM, "data": {"is_typing": True}})
    await sam.recv_code("typing")
    cursor = base64.b64encode(b'\x01\x2a\x01\x0b{"cursor":3}').decode()
    awareness = {"doc_id": "notes", "update": cursor}
    await ann.send({"code": "awareness", "room_id": ROOM, "data": awareness})
    await sam.recv_code("awareness")
    moved = Moves(before, await scrape(server))
    assert moved("productflo_deliveries_total") == 2  # to sam, not back to ann
    assert moved("productflo_inbound_messages_total", code="awareness") == 1


async def test_ai_requests_in_flight_rise_while_asked_and_fall_once_answered(
    server: ServerThread, connect: Any, fake_openai: FakeOpenAI
) -> None:
    ann = await connect("/ws?user_id=ann")
    await ann.join(ROOM)
    base = await scrape(server)
    _, _, answer = await ask(ann, "haitch_chat", ROOM, "hello?")
    assert answer["status"] == "success"
    await eventually(
        server, base, _answered("success"), "the answered request is still counted in flight"
    )

    fake_openai.hang(times=1)  # the model thinks until the fake is stopped
    asked = {"code": "haitch_chat", "room_id": ROOM, "client_msg_id": "held", "data": {}}
    await ann.send({**asked, "data": {"message": "and now?"}})
    await ann.recv_until(lambda m: m["status"] == "pending" and m.get("client_msg_id") == "held")
    async with asyncio.timeout(DEADLINE):
        while len(fake_openai.requests) < 2:  # the assistant took it and asked the model
            await asyncio.sleep(0.02)
    moved = Moves(base, await scrape(server))
    assert moved("productflo_ai_requests_in_flight") == 1
    fake_openai.stop()  # the held request fails, the retries find nobody: an error answer
    failed = await ann.recv_until(lambda m: m["status"] == "error", DEADLINE)
    assert failed["code"] == "chat_response"
    await eventually(server, base, _answered("error"), "the failed request is still in flight")


def _answered(outcome: str) -> Callable[[Moves], bool]:
    """Nothing in flight, and one more haitch_chat answered with `outcome`."""
    return lambda moved: (
        moved("productflo_ai_requests_in_flight") == 0
        and moved("productflo_ai_answers_total", code="haitch_chat", outcome=outcome) == 1
    )


# -- the dashboard --------------------------------------------------------------------------------


def _expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression of the dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "definition") and isinstance(item, str):
                yield item
            else:
                yield from _expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def dashboard_problems(samples: Samples) -> list[str]:
    """What the dashboard's queries ask of /metrics that is not there: a series, or a label
    they group by."""
    expressions = list(_expressions(json.loads(DASHBOARD.read_text())))
    assert len(expressions) > 10, "the dashboard's queries were not found"
    labels_of: dict[str, set[str]] = {}
    for name, labels in samples:
        labels_of.setdefault(name, set()).update(label for label, _ in labels)
    problems = []
    for expression in expressions:
        names = set(re.findall(r"\bproductflo_[a-z_]+", expression))
        grouped = {
            label.strip()
            for found in re.findall(r"\bby\s*\(([^)]*)\)", expression)
            for label in found.split(",")
        } - _ADDED_LABELS
        grouped |= set(re.findall(r"label_values\(\w+,\s*(\w+)\)", expression)) - _ADDED_LABELS
        assert names, f"a query that names no series of ours: {expression}"
        for name in sorted(names):
            if name not in labels_of:
                problems.append(f"{name} (in {expression})")
            elif not grouped <= labels_of[name]:
                problems.append(f"{name} has no label {sorted(grouped - labels_of[name])}")
    return problems


async def test_every_series_the_dashboard_draws_is_in_metrics(server: ServerThread) -> None:
    """On a server nothing has happened to yet: every panel has its series from the start."""
    assert dashboard_problems(await scrape(server)) == []


# -- --workers ------------------------------------------------------------------------------------


def _worker_holding(workers: list[psutil.Process], port: int, local_port: int) -> int | None:
    for worker in workers:
        for connection in worker.net_connections("tcp"):
            if (
                connection.laddr.port == port
                and connection.raddr
                and connection.raddr.port == local_port
            ):
                return worker.pid
    return None


def scrape_worker(port: int, workers: list[psutil.Process]) -> tuple[int, Samples]:
    """GET /metrics over a connection of its own; which worker answered, and what."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        local_port = sock.getsockname()[1]
        deadline = time.monotonic() + DEADLINE
        while (pid := _worker_holding(workers, port, local_port)) is None:
            assert time.monotonic() < deadline, "no worker accepted the connection"
            time.sleep(0.01)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding" not in head.lower(), head  # the body is read as it came
    return pid, parse(body.decode())


def _agreed(samples: Samples) -> Samples:
    """The series every worker's scrape must report alike while nothing happens: connections
    and counters (lag and in-flight gauges may move between two scrapes)."""
    kept = ("productflo_connections", "productflo_inbound_", "productflo_events_appended_total")
    return {key: v for key, v in samples.items() if key[0].startswith(kept)}


@pytest.mark.slow
async def test_with_workers_every_scrape_counts_the_connections_of_all_of_them(
    launch: Any,  # noqa: F811 (the fixture, imported)
    database_url: DatabaseUrl,
    tmp_path: Path,
) -> None:
    server: Server = launch(_environment(database_url, tmp_path), "--workers", "2", "--no-migrate")
    await _ready(server)
    async with asyncio.timeout(60):
        while server.output_so_far().count("Application startup complete") < 2:
            await asyncio.sleep(0.2)
    workers = _workers(server)
    assert len(workers) == 2, workers

    clients: list[Client] = []
    holders: set[int] = set()
    try:
        while len(clients) < 4 or len(holders) < 2:
            assert len(clients) < 60, "every connection went to one worker"
            client = await Client.open(server.ws + f"/ws?user_id=w{len(clients)}")
            clients.append(client)
            port = client.connection.local_address[1]
            holder = await asyncio.to_thread(_worker_holding, workers, server.port, port)
            assert holder is not None
            holders.add(holder)
        for client in clients:
            await client.send({"code": "join", "room_id": f"own-{client.user_id}"})
            await client.recv_until(_own_join(client.user_id), 30)

        answered: dict[int, int] = {}
        seen: list[Samples] = []
        while min(answered.get(pid, 0) for pid in holders) < 3:
            assert len(seen) < 100, f"one worker answered every scrape: {answered}"
            pid, samples = await asyncio.to_thread(scrape_worker, server.port, workers)
            answered[pid] = answered.get(pid, 0) + 1
            seen.append(samples)
            assert value(
                samples, "productflo_connections", transport="native", endpoint="/ws"
            ) == len(clients), f"worker {pid} reported another number of connections"
            assert value(samples, "productflo_inbound_messages_total", code="join") == len(clients)
            assert value(samples, "productflo_events_appended_total") == len(clients)
        assert all(_agreed(samples) == _agreed(seen[0]) for samples in seen)
        assert dashboard_problems(seen[-1]) == []
    finally:
        for client in clients:
            await client.close()

    async def no_connections_left() -> bool:
        _, samples = await asyncio.to_thread(scrape_worker, server.port, workers)
        return value(samples, "productflo_connections", transport="native", endpoint="/ws") == 0

    await _until(no_connections_left, "a worker still counts connections that were closed")
    assert server.stop()


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
