"""Append throughput: acknowledged chat messages per second through the real server.

    .venv/bin/python -m bench.append_throughput [--clients 50] [--in-flight 20] [--runs 5] ...

What is measured (README.md has the numbers and how to read them):

- websocket: `productflo serve` as a subprocess; N WebSocket clients, one room each (so every
  event is delivered once, to its sender, and the figure is the appender's commit rate, not room
  fan-out), each sending chat messages with up to K unacknowledged at a time. A message counts
  when its `chat_response` (the sender's acknowledgement, sent after the commit) arrives inside
  the measurement window. Also: ack latency percentiles, the server's peak RSS, and the mean
  events per group-commit transaction from GET /metrics.
- baseline: what PostgreSQL gives without group commit: the same number of events, each INSERTed
  in a transaction of its own (autocommit: the INSERT and its COMMIT in one round trip) by N
  concurrent asyncpg connections, into a scratch table with the log's columns and indexes.
- raw batched: PostgreSQL's own batched insert rate, the figure the issue compares the append
  rate with: the same events again, --batch-rows to a transaction over --batch-connections
  connections, two ways, as one multi-row INSERT (unnest of arrays) and as one COPY (binary).
  Neither is faster everywhere, so each round's rate is the faster of the two in that round, and
  the websocket and eventstore rates are reported as shares of it.
- eventstore: the EventStore itself, in this process, N concurrent tasks appending one event each
  at a time (the group-commit appender without WebSocket, JSON or delivery in the way).

They are interleaved round by round, so drift on a shared machine hits them alike; medians
over the rounds are reported. The database is an embedded PostgreSQL in a temporary directory, or
the server named by PRODUCTFLO_DATABASE_URL (a fresh database is created on it and dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect

from bench._harness import (
    ServerProcess,
    add_run_options,
    database_facts,
    fresh_database,
    http_get,
    memory_kib,
    postgres_root,
    running_server,
)
from productflo.database import DatabaseUrl
from productflo.events.models import NewEvent, room_stream
from productflo.events.store import EventStore

RESULTS = Path(__file__).resolve().parent / "results" / "append_throughput.json"
RATE_LIMIT = "100000"  # messages/s per connection: far above what a client here can send
DRAIN_TIMEOUT = 30.0
MESSAGE = "Has anyone reviewed the latest design update? The enclosure tolerances changed."

# The baselines' table: the log's columns, defaults, constraints and indexes, without its head
# row (positions from a sequence instead) and without its append-only triggers.
SCRATCH = (
    "CREATE SEQUENCE bench_scratch_position",
    "CREATE TABLE bench_scratch (LIKE events INCLUDING ALL)",
    "ALTER TABLE bench_scratch ALTER position SET DEFAULT nextval('bench_scratch_position')",
)
SCRATCH_COLUMNS = ["event_id", "stream", "version", "type", "data", "metadata"]
SCRATCH_INSERT = """
INSERT INTO bench_scratch (event_id, stream, version, type, data, metadata)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)
"""
SCRATCH_BATCH_INSERT = """
INSERT INTO bench_scratch (event_id, stream, version, type, data, metadata)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::jsonb[])
"""
BATCH_ROWS = 1000  # rows per transaction in the raw batched baselines
BATCH_CONNECTIONS = 2


@dataclass(frozen=True)
class Options:
    clients: int
    in_flight: int
    runs: int
    duration: float
    warmup: float
    output: Path | None
    batch_rows: int
    batch_connections: int


@dataclass(frozen=True)
class Window:
    """Sending starts at `begin`; what arrives in [start, end] is counted; sending stops at end."""

    begin: float
    start: float
    end: float

    @classmethod
    def after(cls, warmup: float, duration: float) -> Window:
        begin = time.perf_counter()
        return cls(begin, begin + warmup, begin + warmup + duration)

    def counts(self, moment: float) -> bool:
        return self.start <= moment <= self.end


@dataclass
class Tally:
    """Acknowledgements counted inside a window, with their latencies in seconds."""

    acked: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.acked += other.acked
        self.latencies.extend(other.latencies)


@dataclass(frozen=True)
class CommitStats:
    """Deltas of the group-commit histograms over one run."""

    events: float
    commits: float
    seconds: float

    @property
    def events_per_commit(self) -> float:
        return self.events / self.commits if self.commits else 0.0


@dataclass(frozen=True)
class WebSocketRun:
    rate: float
    acked: int
    latencies: list[float]
    commits: CommitStats
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectRun:
    rate: float
    events: int
    events_per_commit: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Rounds:
    websocket: list[WebSocketRun] = field(default_factory=list)
    baseline: list[DirectRun] = field(default_factory=list)
    eventstore: list[DirectRun] = field(default_factory=list)
    batched_insert: list[DirectRun] = field(default_factory=list)
    batched_copy: list[DirectRun] = field(default_factory=list)

    def raw_batched(self) -> list[float]:
        """PostgreSQL's raw batched insert rate in each round: the faster way of that round."""
        pairs = zip(self.batched_insert, self.batched_copy, strict=True)
        return [max(insert.rate, copy.rate) for insert, copy in pairs]


def histogram_totals(text: str, name: str) -> tuple[float, float]:
    """(_sum, _count) of an unlabelled Prometheus histogram."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in (f"{name}_sum", f"{name}_count"):
            found[key] = float(value)
    return found.get(f"{name}_sum", 0.0), found.get(f"{name}_count", 0.0)


async def scrape(server: ServerProcess) -> tuple[float, float, float]:
    """Events appended, commits, and seconds spent committing, so far."""
    text = await asyncio.to_thread(http_get, server.http + "/metrics")
    events, commits = histogram_totals(text, "productflo_append_batch_events")
    seconds, _ = histogram_totals(text, "productflo_append_transaction_seconds")
    return events, commits, seconds


# -- CPU --------------------------------------------------------------------------------------


def _busy(process: psutil.Process, *, reaped: bool = False) -> float:
    """CPU seconds of a process (and, with `reaped`, of its children that have exited)."""
    times = process.cpu_times()
    total = float(times.user + times.system)
    if reaped:
        total += float(times.children_user + times.children_system)
    return total


def _tree_busy(root: psutil.Process) -> float:
    total = _busy(root, reaped=True)
    for child in root.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += _busy(child)
    return total


@dataclass(frozen=True)
class Meters:
    """CPU time of the server, of this process (the load), and of a local PostgreSQL."""

    server: psutil.Process | None
    load: psutil.Process
    postgres: psutil.Process | None

    def snapshot(self) -> dict[str, float]:
        now = {"wall": time.perf_counter(), "load": _busy(self.load)}
        if self.server is not None:
            now["server"] = _busy(self.server)
        if self.postgres is not None:
            with contextlib.suppress(psutil.Error):
                now["postgres"] = _tree_busy(self.postgres)
        return now

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU cores used on average between two snapshots, by component."""
        wall = after["wall"] - before["wall"]
        return {
            name: round((after[name] - before[name]) / wall, 2)
            for name in after
            if name != "wall" and name in before
        }


async def postmaster(url: DatabaseUrl) -> psutil.Process | None:
    """The PostgreSQL server process, when it runs on this machine (else None)."""
    connection = await asyncpg.connect(url.dsn)
    try:
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(backend).parent()
            if parent is not None and "postgres" in parent.name():
                return parent
        return None
    finally:
        await connection.close()


# -- WebSocket clients ---------------------------------------------------------------------------


async def recv_json(connection: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await connection.recv())
    if message.get("status") == "error":
        raise RuntimeError(f"the server refused a message: {message}")
    return message


async def open_client(server: ServerProcess, user: str, room: str) -> ClientConnection:
    """Connected, welcomed, and a member of its room."""
    connection = await connect(
        f"{server.ws}/ws?user_id={user}", compression=None, proxy=None, max_size=None
    )
    welcome = await recv_json(connection)
    assert welcome["code"] == "system", welcome
    await connection.send(json.dumps({"code": "join", "room_id": room}))
    while True:
        message = await recv_json(connection)
        if message["code"] == "system" and message.get("room_id") == room:
            return connection


def chat_frame(room: str, seq: int) -> str:
    return json.dumps({"code": "chat", "room_id": room, "data": {"message": f"{seq} {MESSAGE}"}})


async def pump(connection: ClientConnection, room: str, in_flight: int, window: Window) -> Tally:
    """Send until the window ends with at most `in_flight` unacknowledged; then drain."""
    tally = Tally()
    pending: deque[float] = deque()  # send times; acks come back in sending order
    slots = asyncio.Semaphore(in_flight)

    async def send() -> None:
        seq = 0
        while True:
            await slots.acquire()
            if time.perf_counter() >= window.end:
                return
            seq += 1
            pending.append(time.perf_counter())
            await connection.send(chat_frame(room, seq))

    async def receive() -> None:
        while not (sender.done() and not pending):
            message = await recv_json(connection)
            if message["code"] != "chat_response":
                continue
            now, sent = time.perf_counter(), pending.popleft()
            if window.counts(now):
                tally.acked += 1
                tally.latencies.append(now - sent)
            slots.release()

    sender = asyncio.create_task(send())
    receiver = asyncio.create_task(receive())
    await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    if receiver.done() and not sender.done():  # it only ends early by failing
        sender.cancel()
        receiver.result()
    await sender
    if pending:
        await asyncio.wait_for(receiver, DRAIN_TIMEOUT)
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiver
    return tally


async def websocket_run(server: ServerProcess, options: Options, round_no: int) -> WebSocketRun:
    names = [
        (f"bench-r{round_no}-u{i}", f"bench-r{round_no}-room{i}") for i in range(options.clients)
    ]
    connections = await asyncio.gather(*(open_client(server, u, r) for u, r in names))
    try:
        before = await scrape(server)
        window = Window.after(options.warmup, options.duration)
        tallies = await asyncio.gather(
            *(
                pump(c, room, options.in_flight, window)
                for c, (_, room) in zip(connections, names, strict=True)
            )
        )
        after = await scrape(server)
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    total = Tally()
    for tally in tallies:
        total.add(tally)
    commits = CommitStats(*(b - a for a, b in zip(before, after, strict=True)))
    return WebSocketRun(total.acked / options.duration, total.acked, total.latencies, commits)


# -- direct appends ------------------------------------------------------------------------------


async def timed_workers(workers: int, work: Callable[[int], Awaitable[None]]) -> float:
    began = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(workers)))
    return time.perf_counter() - began


Row = tuple[uuid.UUID, str, int, str, str, str]  # in SCRATCH_COLUMNS order
Write = Callable[[asyncpg.Connection, list[Row]], Awaitable[None]]


def scratch_rows(stream: str, user: str, count: int) -> list[Row]:
    """`count` chats of one user on a stream of its own, as the server would log them."""
    data = json.dumps({"message": MESSAGE})
    metadata = json.dumps({"user_id": user, "transport": "bench"})
    return [
        (uuid.uuid4(), stream, version, "chat", data, metadata) for version in range(1, count + 1)
    ]


async def insert_one(connection: asyncpg.Connection, rows: list[Row]) -> None:
    (row,) = rows
    await connection.execute(SCRATCH_INSERT, *row)


async def insert_batch(connection: asyncpg.Connection, rows: list[Row]) -> None:
    columns = [list(column) for column in zip(*rows, strict=True)]
    await connection.execute(SCRATCH_BATCH_INSERT, *columns)


async def copy_batch(connection: asyncpg.Connection, rows: list[Row]) -> None:
    await connection.copy_records_to_table("bench_scratch", records=rows, columns=SCRATCH_COLUMNS)


async def scratch_run(
    url: DatabaseUrl, connections: int, events: int, per_transaction: int, write: Write
) -> DirectRun:
    """`events` rows into the scratch table over `connections` concurrent connections, each its
    own stream, `per_transaction` rows to a transaction (autocommit: one statement each). The
    rows are made before the clock starts, so that it times PostgreSQL and the driver."""
    opened = await asyncio.gather(*(asyncpg.connect(url.dsn) for _ in range(connections)))
    run = uuid.uuid4().hex[:8]
    shares = [events // connections + (i < events % connections) for i in range(connections)]
    transactions = [
        chunks(
            scratch_rows(room_stream(f"baseline-{run}-{i}"), f"baseline-{i}", n), per_transaction
        )
        for i, n in enumerate(shares)
    ]

    async def work(i: int) -> None:
        for rows in transactions[i]:
            await write(opened[i], rows)

    try:
        elapsed = await timed_workers(connections, work)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    return DirectRun(events / elapsed, events)


def chunks(rows: list[Row], size: int) -> list[list[Row]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


async def eventstore_run(store: EventStore, tasks: int, window: Window) -> DirectRun:
    """`tasks` concurrent appenders, one event per append, counted inside the window."""
    counted = 0

    async def work(i: int) -> None:
        nonlocal counted
        stream, metadata = room_stream(f"direct-{i}"), {"user_id": f"direct-{i}"}
        while time.perf_counter() < window.end:
            await store.append([NewEvent(stream, "chat", {"message": MESSAGE}, metadata)])
            if window.counts(time.perf_counter()):
                counted += 1

    async def counters_at(moment: float) -> tuple[int, int]:
        await asyncio.sleep(max(0.0, moment - time.perf_counter()))
        return store.batches_committed, store.events_committed

    start, end, _ = await asyncio.gather(
        counters_at(window.start), counters_at(window.end), timed_workers(tasks, work)
    )
    commits, events = end[0] - start[0], end[1] - start[1]
    per_commit = events / commits if commits else None
    return DirectRun(counted / (window.end - window.start), counted, per_commit)


async def prepare_scratch(url: DatabaseUrl) -> None:
    connection = await asyncpg.connect(url.dsn)
    try:
        for statement in SCRATCH:
            await connection.execute(statement)
    finally:
        await connection.close()


# -- the rounds ----------------------------------------------------------------------------------


async def measure(options: Options, server: ServerProcess, direct: DatabaseUrl) -> Rounds:
    await prepare_scratch(direct)
    meters = Meters(psutil.Process(server.pid), psutil.Process(), await postmaster(direct))
    store = EventStore(direct.dsn)
    await store.start()
    rounds = Rounds()
    try:
        for round_no in range(options.runs):
            ws = await metered(meters, websocket_run(server, options, round_no))
            rounds.websocket.append(ws)
            events = max(ws.acked, 1000)
            one_by_one = scratch_run(direct, options.clients, events, 1, insert_one)
            rounds.baseline.append(await metered(meters, one_by_one))
            batched = (options.batch_connections, events, options.batch_rows)
            rounds.batched_insert.append(
                await metered(meters, scratch_run(direct, *batched, insert_batch))
            )
            rounds.batched_copy.append(
                await metered(meters, scratch_run(direct, *batched, copy_batch))
            )
            window = Window.after(options.warmup, options.duration)
            rounds.eventstore.append(
                await metered(meters, eventstore_run(store, options.clients, window))
            )
            progress(round_no, rounds)
    finally:
        await store.close()
    return rounds


Run = TypeVar("Run", WebSocketRun, DirectRun)


async def metered(meters: Meters, run: Awaitable[Run]) -> Run:
    """Run one measurement, adding the CPU cores each component used meanwhile."""
    before = meters.snapshot()
    result = await run
    return replace(result, cpu=Meters.cores(before, meters.snapshot()))


def progress(round_no: int, rounds: Rounds) -> None:
    ws, base, direct = rounds.websocket[-1], rounds.baseline[-1], rounds.eventstore[-1]
    insert, copy = rounds.batched_insert[-1], rounds.batched_copy[-1]
    print(
        f"round {round_no + 1}: websocket {ws.rate:8.0f} ev/s ({ws.commits.events_per_commit:.1f}"
        f" ev/commit)  baseline {base.rate:8.0f} ev/s  eventstore {direct.rate:8.0f} ev/s"
        f"  raw batched: insert {insert.rate:8.0f} copy {copy.rate:8.0f} ev/s",
        file=sys.stderr,
        flush=True,
    )


# -- the report ----------------------------------------------------------------------------------


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        name: round(1000 * cuts[index - 1], 2)
        for name, index in (("p50", 50), ("p95", 95), ("p99", 99))
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_medians(runs: list[WebSocketRun] | list[DirectRun]) -> dict[str, float]:
    """Median CPU cores used per component over the runs."""
    names = sorted({name for run in runs for name in run.cpu})
    return {
        name: round(median([run.cpu[name] for run in runs if name in run.cpu]), 2) for name in names
    }


def rates(runs: list[WebSocketRun] | list[DirectRun]) -> dict[str, Any]:
    return {
        "events_per_s_median": round(median([run.rate for run in runs])),
        "events_per_s_runs": [round(run.rate) for run in runs],
        "cpu_cores_median": cpu_medians(runs),
    }


def websocket_summary(runs: list[WebSocketRun], memory: dict[str, int]) -> dict[str, Any]:
    latencies = [value for run in runs for value in run.latencies]
    events = sum(run.commits.events for run in runs)
    commits = sum(run.commits.commits for run in runs)
    seconds = sum(run.commits.seconds for run in runs)
    return {
        **rates(runs),
        "ack_latency_ms": percentiles_ms(latencies),
        "events_per_commit_mean": round(events / commits, 2) if commits else None,
        "events_per_commit_runs": [round(run.commits.events_per_commit, 2) for run in runs],
        "commit_ms_mean": round(1000 * seconds / commits, 3) if commits else None,
        "server_peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
        "server_rss_at_end_mib": round(memory.get("VmRSS", 0) / 1024, 1),
    }


def shares_of(measured: list[float], basis: list[float]) -> dict[str, Any]:
    """Each round's rate as a share of the same round's `basis`, and their median."""
    shares = [rate / of for rate, of in zip(measured, basis, strict=True)]
    return {
        "median": round(median(shares), 3),
        "runs": [round(share, 3) for share in shares],
    }


def raw_batched_summary(options: Options, rounds: Rounds) -> dict[str, Any]:
    basis = rounds.raw_batched()
    return {
        "connections": options.batch_connections,
        "rows_per_transaction": options.batch_rows,
        "events_per_s_median": round(median(basis)),
        "events_per_s_runs": [round(rate) for rate in basis],
        "faster_way_runs": [
            "copy" if copy.rate > insert.rate else "insert"
            for insert, copy in zip(rounds.batched_insert, rounds.batched_copy, strict=True)
        ],
        "insert": rates(rounds.batched_insert),
        "copy": rates(rounds.batched_copy),
        "websocket_share": shares_of([run.rate for run in rounds.websocket], basis),
        "eventstore_share": shares_of([run.rate for run in rounds.eventstore], basis),
    }


def eventstore_summary(runs: list[DirectRun]) -> dict[str, Any]:
    ratios = [run.events_per_commit for run in runs if run.events_per_commit]
    return {
        **rates(runs),
        "events_per_commit_median": round(median(ratios), 2) if ratios else None,
    }


def summarize(
    options: Options, rounds: Rounds, memory: dict[str, int], facts: dict[str, Any]
) -> dict[str, Any]:
    return {
        "benchmark": "append_throughput",
        "command": " ".join(["python -m bench.append_throughput", *sys.argv[1:]]),
        "config": {
            "clients": options.clients,
            "in_flight_per_client": options.in_flight,
            "rooms": "one per client",
            "runs": options.runs,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "rate_limit": int(RATE_LIMIT),
            "batch_rows": options.batch_rows,
            "batch_connections": options.batch_connections,
        },
        "environment": facts,
        "websocket": websocket_summary(rounds.websocket, memory),
        "eventstore_in_process": {
            "tasks": options.clients,
            **eventstore_summary(rounds.eventstore),
        },
        "baseline_one_event_per_transaction": {
            "connections": options.clients,
            **rates(rounds.baseline),
        },
        "baseline_raw_batched": raw_batched_summary(options, rounds),
    }


def _cores(section: dict[str, Any]) -> str:
    cpu: dict[str, float] = section["cpu_cores_median"]
    return " ".join(f"{name} {value:.2f}" for name, value in cpu.items())


def table(summary: dict[str, Any]) -> str:
    ws = summary["websocket"]
    base = summary["baseline_one_event_per_transaction"]
    direct = summary["eventstore_in_process"]
    raw = summary["baseline_raw_batched"]
    latency = ws["ack_latency_ms"]
    n = summary["config"]["clients"]
    batches = (
        f"{raw['rows_per_transaction']:,} rows a transaction, {raw['connections']} connections"
    )
    rows = [
        ("", "events/s", "CPU cores (median)", "notes"),
        (
            f"websocket, {n} clients",
            f"{ws['events_per_s_median']:,}",
            _cores(ws),
            f"{raw['websocket_share']['median']:.0%} of raw batched; "
            f"ack p50/p95/p99 {latency['p50']}/{latency['p95']}/{latency['p99']} ms; "
            f"{ws['events_per_commit_mean']} events/commit; "
            f"server peak RSS {ws['server_peak_rss_mib']} MiB",
        ),
        (
            f"eventstore, {n} tasks",
            f"{direct['events_per_s_median']:,}",
            _cores(direct),
            f"{raw['eventstore_share']['median']:.0%} of raw batched; "
            f"{direct['events_per_commit_median']} events/commit; in process, no WebSocket",
        ),
        (
            f"baseline, {n} connections",
            f"{base['events_per_s_median']:,}",
            _cores(base),
            "one INSERT per transaction: no group commit",
        ),
        (
            "raw batched",
            f"{raw['events_per_s_median']:,}",
            "",
            f"the faster of the two below in each round ({', '.join(raw['faster_way_runs'])})",
        ),
        (
            "  multi-row INSERT",
            f"{raw['insert']['events_per_s_median']:,}",
            _cores(raw["insert"]),
            f"unnest of arrays, {batches}",
        ),
        (
            "  COPY",
            f"{raw['copy']['events_per_s_median']:,}",
            _cores(raw["copy"]),
            f"binary, {batches}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows
    )


def write_results(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(summary, indent=2) + "\n")
    scratch.replace(path)


# -- main ----------------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.append_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=50, help="WebSocket clients (default 50)")
    parser.add_argument("--in-flight", type=int, default=20, help="unacknowledged per client (20)")
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=BATCH_ROWS,
        help=f"rows per transaction in the raw batched baselines ({BATCH_ROWS})",
    )
    parser.add_argument(
        "--batch-connections",
        type=int,
        default=BATCH_CONNECTIONS,
        help=f"connections of the raw batched baselines ({BATCH_CONNECTIONS})",
    )
    add_run_options(parser, RESULTS)
    args = parser.parse_args(argv)
    output = None if args.no_output else args.output
    return Options(
        clients=args.clients,
        in_flight=args.in_flight,
        runs=args.runs,
        duration=args.duration,
        warmup=args.warmup,
        output=output,
        batch_rows=args.batch_rows,
        batch_connections=args.batch_connections,
    )


def environment_facts(
    database: str, db_facts: dict[str, str], load: tuple[float, float, float]
) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(value, 2) for value in load],
        "python": platform.python_version(),
        "database": database,
        **db_facts,
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    load = os.getloadavg()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as scratch:
        workdir = Path(scratch)
        with (
            postgres_root(workdir) as (root, where),
            fresh_database(root, f"productflo_bench_{tag}_server") as served,
            fresh_database(root, f"productflo_bench_{tag}_direct") as direct,
        ):
            facts = environment_facts(where, asyncio.run(database_facts(direct)), load)
            with running_server(served, workdir, {"PRODUCTFLO_RATE_LIMIT": RATE_LIMIT}) as server:
                rounds = asyncio.run(measure(options, server, direct))
                memory = memory_kib(server.pid)
    summary = summarize(options, rounds, memory, facts)
    print(table(summary))
    if options.output is not None:
        write_results(summary, options.output)
        print(f"results: {options.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
