"""Reads on a hot standby: the primary's CPU per delivered event, reads on the primary next to
reads on the standby, in one run (issue 16).

    .venv/bin/python -m bench.standby_reads [--servers 3] [--clients 4] [--writers 2] \
        [--rate 50] [--runs 5] [--duration 5] [--warmup 1]

A real PostgreSQL primary and synchronous standby on loopback (tests/replication.py: the embedded
wheel's initdb and pg_basebackup -R, synchronous_commit on), migrated once. Each round runs both
configurations, one after the other (which goes first alternates from round to round, so that
drift on a shared machine hits them alike):

- primary: --servers `productflo serve` processes on the primary, with no read URL: every
  process tails, replays and pages history from the primary;
- standby: the same with PRODUCTFLO_DATABASE_READ_URL naming the standby.

Each run starts its own servers (idle ones would still tail the log) after a CHECKPOINT on both
nodes, and a fresh room: --clients native /ws clients per server, all in it; --writers of them (on
different servers) send chats at --rate messages/s each, steadily, from the start of the warm-up
to the end of the measured window. Counted in the window: the chat_responses the clients
received (deliveries: each event reaches every client, its sender included), the CPU seconds of
each node's postmaster and its children (psutil), by kind (the servers' backends, walsender,
startup, ...), of the servers, of this process (the clients), and of the rest of the machine;
pg_stat_database's transactions and rows read and written on each node (approximate: a backend
reports them when it goes idle, at most once a second); latency from the send to each other
client's receipt, for the messages sent in the window. A run counts only when every client
received every message once and in order (the same event ids in the same order everywhere):
otherwise the benchmark fails. The measured part holds /tmp/bench.lock (flock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection

from bench._harness import ServerProcess, add_run_options, database_facts, running_server
from bench.append_throughput import (
    RATE_LIMIT,
    Window,
    chat_frame,
    environment_facts,
    open_client,
    percentiles_ms,
    write_results,
)
from bench.docs_throughput import bench_lock
from bench.socketio_throughput import code_facts, machine_busy, server_log_facts
from productflo import migrate
from tests import replication

RESULTS = Path(__file__).resolve().parent / "results" / "standby_reads.json"
CONFIGS = ("primary", "standby")
READ_URL = "PRODUCTFLO_DATABASE_READ_URL"
DRAIN_TIMEOUT = 30.0
DRAIN_STEP = 0.02


@dataclass(frozen=True)
class Options:
    servers: int
    clients: int
    writers: int
    rate: float
    runs: int
    duration: float
    warmup: float
    output: Path | None


@dataclass
class Member:
    """One client: what it received (sender, seq, event id), in order, and what it counted."""

    user: str
    connection: ClientConnection
    got: list[tuple[str, int, int]] = field(default_factory=list)
    counted: int = 0  # chat_responses received inside the window
    latencies: list[float] = field(default_factory=list)  # of others' messages sent in it


@dataclass(frozen=True)
class Run:
    config: str
    round: int
    deliveries: int
    events: int  # distinct events delivered (to the first client) inside the window
    cpu_s: dict[str, float]  # CPU seconds in the window: primary, standby, servers, clients, ...
    latencies: list[float]
    standby_backends: int  # the servers' connections to the standby's database
    activity: dict[str, float]  # pg_stat_database's counts in the window, as `node/count`
    server_log: dict[str, int]

    def summary(self, duration: float) -> dict[str, Any]:
        per = {name: round(1e6 * used / self.deliveries, 1) for name, used in self.cpu_s.items()}
        return {
            "config": self.config,
            "round": self.round,
            "deliveries_per_s": round(self.deliveries / duration, 1),
            "events_per_s": round(self.events / duration, 1),
            "cpu_cores": {name: round(used / duration, 3) for name, used in self.cpu_s.items()},
            "cpu_us_per_delivery": per,
            "primary_us_per_event": round(1e6 * self.cpu_s["primary"] / self.events, 1),
            "database_activity_per_event": {
                name: round(count / self.events, 1) for name, count in self.activity.items()
            },
            "delivery_latency_ms": percentiles_ms(self.latencies),
            "standby_backends": self.standby_backends,
            "server_log": self.server_log,
        }


# -- one run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(
    pair: replication.Pair, config: str, count: int, workdir: Path
) -> Iterator[list[ServerProcess]]:
    settings = {"PRODUCTFLO_RATE_LIMIT": RATE_LIMIT}
    if config == "standby":
        settings[READ_URL] = pair.standby.url().dsn
    with contextlib.ExitStack() as stack:
        started = []
        for n in range(count):
            (workdir / f"server-{n}").mkdir()
            where = workdir / f"server-{n}"
            started.append(stack.enter_context(running_server(pair.primary.url(), where, settings)))
        yield started


async def on_node(node: replication.Node, statement: str) -> dict[str, Any]:
    """The first row of what `statement` returns on the node (empty: none)."""
    connection = await asyncpg.connect(node.url().dsn)
    try:
        row = await connection.fetchrow(statement)
        return dict(row) if row is not None else {}
    finally:
        await connection.close()


def node_busy(name: str, node: replication.Node) -> dict[str, float]:
    """CPU seconds so far of a node's postmaster and of each kind of its children (`exited`:
    the children gone), as `name/kind`."""
    postmaster = node.postmaster()
    times = postmaster.cpu_times()
    busy = {
        f"{name}/postmaster": float(times.user + times.system),
        f"{name}/exited": float(times.children_user + times.children_system),
    }
    for child in postmaster.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            key = f"{name}/{process_kind(child)}"
            busy[key] = busy.get(key, 0.0) + process_busy(child)
    return busy


def process_kind(child: psutil.Process) -> str:
    """`backends` (the servers' connections), or what PostgreSQL's title says the process is
    (`forked`: a child that has no title of its own yet)."""
    title = " ".join(child.cmdline())
    if not title.startswith("postgres: "):
        return "forked"
    if title.startswith(f"postgres: {replication.USER} {replication.DATABASE} "):
        return "backends"
    return title.split()[1]


def process_busy(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


ACTIVITY = """
SELECT xact_commit + xact_rollback AS transactions, tup_returned + tup_fetched AS rows_read,
       tup_inserted + tup_updated + tup_deleted AS rows_written
FROM pg_stat_database WHERE datname = current_database()
"""


async def activity_now(pair: replication.Pair) -> dict[str, float]:
    """pg_stat_database's transactions and rows of the log's database on each node so far (each
    backend reports its counts when it goes idle, at most once a second)."""
    counts = {}
    for name, node in (("primary", pair.primary), ("standby", pair.standby)):
        row = await on_node(node, ACTIVITY)
        counts.update({f"{name}/{key}": float(value) for key, value in row.items()})
    return counts


def cpu_now(pair: replication.Pair, started: list[ServerProcess]) -> dict[str, float]:
    busy = {**node_busy("primary", pair.primary), **node_busy("standby", pair.standby)}
    busy["servers"] = sum(process_busy(psutil.Process(server.pid)) for server in started)
    busy["clients"] = process_busy(psutil.Process())
    return {**busy, **machine_busy()}


def window_cpu(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each part used between two snapshots; `primary` and `standby` are the sums
    of their parts, `others` what the rest of the machine used."""
    used = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in {*before, *after}}
    for node in ("primary", "standby"):
        used[node] = sum(value for name, value in used.items() if name.startswith(f"{node}/"))
    ours = sum(used[name] for name in ("primary", "standby", "servers", "clients"))
    used["others"] = max(0.0, used.pop("machine") - ours)
    del used["steal"]
    return {name: round(value, 3) for name, value in sorted(used.items())}


async def receive(member: Member, window: Window, sent: dict[tuple[str, int], float]) -> None:
    async for raw in member.connection:
        message = json.loads(raw)
        if message.get("status") == "error":
            raise RuntimeError(f"{member.user} was refused: {message}")
        if message["code"] != "chat_response":
            continue
        now = time.perf_counter()
        sender, seq = message["user_id"], int(message["data"]["message"].split()[0])
        member.got.append((sender, seq, int(message["event_id"])))
        if window.counts(now):
            member.counted += 1
        at = sent[(sender, seq)]
        if sender != member.user and window.counts(at):
            member.latencies.append(now - at)


async def write(
    member: Member, room: str, rate: float, window: Window, sent: dict[tuple[str, int], float]
) -> int:
    """Chats at `rate` per second from the window's beginning to its end; how many were sent."""
    seq = 0
    while True:
        due = window.begin + seq / rate
        if due >= window.end:
            return seq
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        seq += 1
        sent[(member.user, seq)] = time.perf_counter()
        await member.connection.send(chat_frame(room, seq))


async def drained(
    members: list[Member], expected: int, receivers: list[asyncio.Task[None]]
) -> None:
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while any(len(member.got) < expected for member in members):
        for task in receivers:
            if task.done():
                task.result()  # a receiver that ended early failed: say why
                raise RuntimeError("a client's connection closed before it received everything")
        if time.perf_counter() > deadline:
            short = {m.user: expected - len(m.got) for m in members if len(m.got) < expected}
            raise RuntimeError(f"not delivered within {DRAIN_TIMEOUT} s: {short}")
        await asyncio.sleep(DRAIN_STEP)


def check_delivery(members: list[Member], sent_by: dict[str, int]) -> None:
    """Every client received every message once, in order, and all in the same order."""
    first = [event for _, _, event in members[0].got]
    if first != sorted(set(first)):
        raise RuntimeError(f"{members[0].user}: event ids not strictly increasing")
    for member in members:
        if [event for _, _, event in member.got] != first:
            raise RuntimeError(f"{member.user} received other events than {members[0].user}")
        for writer, count in sent_by.items():
            seqs = [seq for sender, seq, _ in member.got if sender == writer]
            if seqs != list(range(1, count + 1)):
                raise RuntimeError(f"{member.user} did not get {writer}'s {count} chats in order")


async def load(
    options: Options, pair: replication.Pair, started: list[ServerProcess], tag: str
) -> tuple[list[Member], dict[str, float], dict[str, float]]:
    room = f"standby-bench-{tag}"
    members = [
        Member(user, await open_client(server, user, room))
        for n, server in enumerate(started)
        for user in (f"{tag}-s{n}-c{c}" for c in range(options.clients))
    ]
    # Writers on different servers: the w-th is client w // servers of server w % servers.
    writers = [
        members[(w % options.servers) * options.clients + w // options.servers]
        for w in range(options.writers)
    ]
    sent: dict[tuple[str, int], float] = {}
    window = Window.after(options.warmup, options.duration)
    receivers = [asyncio.create_task(receive(member, window, sent)) for member in members]
    sending = asyncio.gather(*(write(w, room, options.rate, window, sent) for w in writers))
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    # The counts first: the backends that read them exit inside the window, their CPU not.
    counted = await activity_now(pair)
    before = cpu_now(pair, started)
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    after, activity = cpu_now(pair, started), await activity_now(pair)
    activity = {name: count - counted[name] for name, count in activity.items()}
    counts = await sending
    sent_by = {writer.user: count for writer, count in zip(writers, counts, strict=True)}
    try:
        await drained(members, sum(counts), receivers)
        check_delivery(members, sent_by)
    finally:
        for task in receivers:
            task.cancel()
        for member in members:
            await member.connection.close()
    return members, window_cpu(before, after), activity


async def measure_run(
    options: Options,
    pair: replication.Pair,
    started: list[ServerProcess],
    config: str,
    round_no: int,
) -> Run:
    backends = await on_node(
        pair.standby,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )
    members, cpu_s, activity = await load(options, pair, started, f"{config}{round_no}")
    return Run(
        config=config,
        round=round_no,
        deliveries=sum(member.counted for member in members),
        events=members[0].counted,
        cpu_s=cpu_s,
        latencies=[latency for member in members for latency in member.latencies],
        standby_backends=int(backends["n"]),
        activity=activity,
        server_log={},
    )


def one_run(
    options: Options, pair: replication.Pair, config: str, round_no: int, workdir: Path
) -> Run:
    for node in (pair.primary, pair.standby):
        asyncio.run(on_node(node, "CHECKPOINT"))
    run_dir = workdir / f"{config}-{round_no}"
    run_dir.mkdir()
    with servers(pair, config, options.servers, run_dir) as started:
        run = asyncio.run(measure_run(options, pair, started, config, round_no))
    expected = (
        run.standby_backends >= options.servers if config == "standby" else not run.standby_backends
    )
    if not expected:
        raise RuntimeError(f"{config}: {run.standby_backends} connections on the standby")
    logs = [server_log_facts(path / "server.log") for path in sorted(run_dir.iterdir())]
    tally = {key: sum(log[key] for log in logs) for key in ("warnings", "errors", "tracebacks")}
    return replace(run, server_log=tally)


# -- the summary ---------------------------------------------------------------------------------


def config_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    parts = sorted({name for row in rows for name in row["cpu_cores"]})

    def median(path: tuple[str, ...]) -> float:
        """The median over the runs of row[path[0]][path[1]]... (a part a run lacks: 0)."""
        values: list[float] = []
        for row in rows:
            value: Any = row
            for key in path:
                value = value.get(key, 0.0)
            values.append(value)
        return round(statistics.median(values), 3)

    return {
        "runs": len(rows),
        "deliveries_per_s_median": median(("deliveries_per_s",)),
        "events_per_s_median": median(("events_per_s",)),
        "cpu_us_per_delivery_median": {
            name: median(("cpu_us_per_delivery", name)) for name in parts
        },
        "cpu_cores_median": {name: median(("cpu_cores", name)) for name in parts},
        "primary_us_per_event_median": median(("primary_us_per_event",)),
        "database_activity_per_event_median": {
            name: median(("database_activity_per_event", name))
            for name in rows[0]["database_activity_per_event"]
        },
        "delivery_latency_ms_median": {
            name: median(("delivery_latency_ms", name)) for name in ("p50", "p95", "p99")
        },
    }


def summarize(options: Options, runs: list[Run]) -> dict[str, Any]:
    rows = [run.summary(options.duration) for run in runs]
    configs = {
        config: config_summary([r for r in rows if r["config"] == config]) for config in CONFIGS
    }
    ratios = []
    for round_no in range(1, options.runs + 1):
        pair = {
            r["config"]: r["cpu_us_per_delivery"]["primary"] for r in rows if r["round"] == round_no
        }
        ratios.append(round(pair["standby"] / pair["primary"], 3))
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "clients": options.servers * options.clients,
        "configs": configs,
        "primary_cpu_per_delivery_standby_over_primary": {
            "median": round(statistics.median(ratios), 3),
            "rounds": ratios,
        },
        "runs": rows,
    }


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| reads on | deliveries/s | primary us/delivery | standby us/delivery"
        " | servers us/delivery | primary us/event | delivery p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for config, s in summary["configs"].items():
        per = s["cpu_us_per_delivery_median"]
        latency = s["delivery_latency_ms_median"]
        lines.append(
            f"| {config} | {s['deliveries_per_s_median']:,.0f} | {per['primary']}"
            f" | {per['standby']} | {per['servers']} | {s['primary_us_per_event_median']}"
            f" | {latency['p50']} / {latency['p99']} |"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def progress(row: dict[str, Any]) -> None:
    per = row["cpu_us_per_delivery"]
    parts = ("primary", "standby", "servers", "clients", "others")
    print(
        f"round {row['round']} reads on the {row['config']}: {row['deliveries_per_s']:,.0f}"
        " deliveries/s; us per delivery "
        + ", ".join(f"{name} {per[name]}" for name in parts)
        + f"; delivery latency {row['delivery_latency_ms']} ms",
        file=sys.stderr,
    )


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.standby_reads", description=__doc__)
    parser.add_argument("--servers", type=int, default=3, help="productflo serve processes (3)")
    parser.add_argument("--clients", type=int, default=4, help="clients per server (4)")
    parser.add_argument("--writers", type=int, default=2, help="clients that send (2)")
    parser.add_argument("--rate", type=float, default=50.0, help="chats/s per writer (50)")
    add_run_options(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.writers > args.servers * args.clients:
        parser.error("at least one round, and no more writers than clients")
    given = {name: getattr(args, name) for name in Options.__dataclass_fields__}
    return Options(**{**given, "output": None if args.no_output else args.output})


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    load_average = os.getloadavg()
    os.environ.pop(READ_URL, None)  # the "primary" runs must not inherit one
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as scratch:
        with replication.primary_and_standby() as pair:
            asyncio.run(replication.create_database(pair))
            asyncio.run(replication.wait_for_synchronous_standby(pair.primary))
            migrate.upgrade(pair.primary.url())
            facts = asyncio.run(database_facts(pair.primary.url()))
            with bench_lock():
                for round_no in range(1, options.runs + 1):
                    order = CONFIGS if round_no % 2 else CONFIGS[::-1]
                    for config in order:
                        run = one_run(options, pair, config, round_no, Path(scratch))
                        runs.append(run)
                        progress(run.summary(options.duration))
    summary = {
        "benchmark": "standby_reads",
        "command": "python -m bench.standby_reads " + " ".join(argv or sys.argv[1:]),
        "environment": environment_facts("tests.replication pair", facts, load_average),
        "code": code_facts(),
        **summarize(options, runs),
    }
    if options.output is not None:
        write_results(summary, options.output)
        print(f"results: {options.output}", file=sys.stderr)
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
