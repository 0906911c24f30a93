"""Fan-out beside Node Socket.IO: productflo, a naive in-memory server and Node, one load design.

    .venv/bin/python -m bench.fanout [--rounds 3] [--clients 100] [--room-size 10] [--messages 200]
                                     [--servers productflo,productflo-socketio,naive,node] ...

The servers, each one process started here: productflo (`productflo serve` on a fresh database,
its rate limit raised out of the way; every message committed to PostgreSQL before anyone receives
it), productflo-socketio (the same process, loaded through its Socket.IO endpoint), naive
(bench/fanout/naive.py: FastAPI + uvicorn with productflo's uvicorn settings, rooms in memory,
nothing stored) and node (bench/fanout/server.js: plain Socket.IO 4, default options).

The load: N clients in rooms of R, driven by --load-processes Node processes (load.js; `ws` on
/ws, socket.io-client over the websocket transport only). Each client joins its room, waits for
its join to come back, then sends M chats. A delivery is one client receiving one chat of its room
(the sender's own copy too: its acknowledgement), so a lossless run makes N * R * M deliveries;
any lost, duplicated, refused or disconnected one fails the run, which is reported as failed and
left out of the medians.

1. Flat out: every client sends its M messages as fast as it can. Rounds are interleaved, the
   servers' order rotating per round. Reported: deliveries/s (median of the rounds, and each),
   the server's CPU µs per delivery (its process tree over the window; with what it spent after
   the window until quiet), PostgreSQL's for productflo, p50/p99 delivery and ack latency.
2. Offered load: the same at --offered-fraction (50 %) of productflo's median message rate
   (messages/s in all, spread evenly over the clients): latency percentiles at equal load.
3. Idle memory: each server started afresh (--quick: the same processes); the growth of its
   resident set per connection while --idle-connections idle connections (welcomed, in no room)
   are opened.

The machine may be shared: each run first waits (up to --wait-quiet s) until work that is none of
these processes uses less than 0.2 of a core, and a run whose window it still made busy is run
again (up to --rerun-busy times), the busy attempt kept in the JSON as discarded. --quick waits
for nothing.

Writes bench/results/fanout.json and bench/results/fanout.png, and prints the tables; exits 1
when any run or idle connection failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._harness import database_facts, fresh_database, postgres_root
from bench.append_throughput import RATE_LIMIT, postmaster, write_results
from bench.fanout import report
from bench.fanout.measure import Bench, Run
from bench.fanout.servers import (
    HERE,
    SERVERS,
    Target,
    node_executable,
    started,
    started_together,
)
from bench.socketio_throughput import code_facts, server_log_facts
from productflo.database import DatabaseUrl

RESULTS = HERE.parent / "results" / "fanout.json"
PLOT = HERE.parent / "results" / "fanout.png"
DEFAULTS = {
    "rounds": 3,
    "clients": 100,
    "room_size": 10,
    "messages": 200,
    "idle": 10000,
    "idle_steps": 4,
    "wait_quiet": 60.0,
    "rerun_busy": 2,
}
# A smoke test: every code path once, and no waiting for a machine that others keep busy.
QUICK = {
    "rounds": 1,
    "clients": 20,
    "room_size": 5,
    "messages": 20,
    "idle": 100,
    "idle_steps": 1,
    "wait_quiet": 0.0,
    "rerun_busy": 0,
}
BEGAN = time.perf_counter()
UNLIMITED_FILES = 1 << 16  # the soft descriptor limit taken when the hard one is unlimited
SERVER_FILES = 512  # descriptors a server holds beside its connections (a generous bound)


def say(text: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"[{time.perf_counter() - BEGAN:6.1f} s] {text}", file=sys.stderr, flush=True)


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per mode (3)")
    parser.add_argument("--clients", type=int, help="clients in each run (100)")
    parser.add_argument("--room-size", type=int, help="clients per room (10)")
    parser.add_argument("--messages", type=int, help="chats each client sends per run (200)")
    parser.add_argument(
        "--idle-connections", dest="idle", type=int, help="idle connections for memory (10000)"
    )
    parser.add_argument(
        "--idle-steps", type=int, help="memory readings after the first, evenly spaced (4)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma list (all)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round: a smoke test of it all"
    )
    parser.add_argument(
        "--load-processes", type=int, default=2, help="Node load generator processes (2)"
    )
    parser.add_argument(
        "--offered-fraction",
        type=float,
        default=0.5,
        help="offered load as a share of productflo's median message rate (0.5); 0: no such mode",
    )
    parser.add_argument(
        "--offered-rate", type=float, help="offered load in messages/s, instead of the fraction"
    )
    parser.add_argument(
        "--stall", type=float, default=20.0, help="seconds without a delivery that end a run (20)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds a run may wait for the rest of the machine to go quiet first (60)",
    )
    parser.add_argument(
        "--rerun-busy",
        type=int,
        help="times a run is run again when other work made its window busy (2)",
    )
    parser.add_argument(
        "--productflo-setting",
        action="append",
        default=[],
        metavar="PRODUCTFLO_NAME=VALUE",
        help="another setting for productflo serve (repeatable); the defaults otherwise, but for"
        f" PRODUCTFLO_RATE_LIMIT={RATE_LIMIT}",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"the PNG ({PLOT})")
    parser.add_argument("--no-output", action="store_true", help="write neither")
    options = parser.parse_args(argv)
    for name, value in (QUICK if options.quick else DEFAULTS).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    options.servers = [name.strip() for name in options.servers.split(",") if name.strip()]
    unknown = set(options.servers) - set(SERVERS)
    if unknown or not options.servers:
        parser.error(f"--servers: unknown {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    settings = [item.partition("=") for item in options.productflo_setting]
    if any(not name.startswith("PRODUCTFLO_") or not eq for name, eq, _ in settings):
        parser.error("--productflo-setting: PRODUCTFLO_NAME=VALUE")
    options.productflo_setting = {name: value for name, _, value in settings}
    if options.clients % options.room_size:
        parser.error("--clients must be a multiple of --room-size")
    return options


def raise_file_limit() -> int:
    """RLIMIT_NOFILE's soft limit raised to its hard one, for this process and so for every child
    (the servers, the load processes): 10,000 idle connections need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an unlimited soft limit for descriptors (it is capped by fs.nr_open).
    ceiling = max(soft, UNLIMITED_FILES) if hard == resource.RLIM_INFINITY else hard
    if soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def check_file_limit(files: int, idle: int) -> None:
    """SystemExit, before anything starts, when the server cannot hold `idle` connections."""
    if idle + SERVER_FILES > files:
        raise SystemExit(
            f"RLIMIT_NOFILE is {files}: {idle:,} idle connections need {idle + SERVER_FILES:,};"
            " raise the hard limit (ulimit -Hn) or lower --idle-connections"
        )


def offered_rate(options: argparse.Namespace, flat: dict[str, list[Run]]) -> float | None:
    """Messages/s in all for the offered-load mode: a share of productflo's median flat-out rate
    (of the slowest server's, when productflo was not measured)."""
    if options.offered_rate:
        return float(options.offered_rate)
    if not options.offered_fraction:
        return None
    medians = {
        server: report.server_summary(runs)["messages_per_s_median"]
        for server, runs in flat.items()
    }
    basis = medians.get("productflo") or min((m for m in medians.values() if m), default=None)
    return round(options.offered_fraction * basis) if basis else None


Runs = dict[str, list[Run]]  # server -> its runs, in round order


async def interleaved(bench: Bench, mode: str, rate: float | None) -> tuple[Runs, Runs]:
    """A run per server per round, the servers' order rotating; a run whose window the rest of
    the machine made busy is run again (up to --rerun-busy times) and kept aside as discarded."""
    servers = bench.options.servers
    runs: Runs = {server: [] for server in servers}
    discarded: Runs = {server: [] for server in servers}
    for round_no in range(bench.options.rounds):
        shift = round_no % len(servers)
        for server in servers[shift:] + servers[:shift]:
            run = await bench.run(server, mode, rate, round_no)
            progress(run)
            while run.busy and run.attempt <= bench.options.rerun_busy:
                discarded[server].append(run)
                run = await bench.run(server, mode, rate, round_no, run.attempt + 1)
                progress(run)
            runs[server].append(run)
    return runs, discarded


def progress(run: Run) -> None:
    cores = run.cores()
    say(
        f"{run.mode} round {run.round_no + 1} {run.server}"
        + (f" (attempt {run.attempt})" if run.attempt > 1 else "")
        + f": {run.deliveries_per_s:,.0f} deliveries/s,"
        f" server {run.us_per_delivery().get('server', 0):.1f} µs/delivery,"
        f" cores server {cores.get('server', 0)} pg {cores.get('postgres', '-')}"
        f" load {run.load_cores} others {cores.get('others', 0)}"
        + (f" (waited {run.waited_for_quiet} s for quiet)" if run.waited_for_quiet else "")
        + (f"  FAILED: {run.problems}" if run.problems else "")
    )


async def throughput(
    options: argparse.Namespace, database: DatabaseUrl, workdir: Path
) -> dict[str, Any]:
    """Both fan-out modes, every server running throughout."""
    settings = options.productflo_setting
    with started_together(options.servers, database, workdir, settings) as targets:
        bench = Bench(targets, await postmaster(database), workdir, options)
        say(f"servers ready: {', '.join(targets)}")
        flat = await interleaved(bench, "flat_out", None)
        rate = offered_rate(options, flat[0])
        offered = await interleaved(bench, "offered", rate) if rate else ({}, {})
        # --quick only smokes the memory code: on the servers already running, which saves
        # restarting them. Otherwise each is measured afresh (idle_memory below).
        memory = await idle_memory_of(bench, targets) if options.quick and options.idle else {}
        logs = {name: server_log_facts(target.log) for name, target in targets.items()}
    return {"flat": flat, "rate": rate, "offered": offered, "logs": logs, "memory": memory}


async def idle_memory_of(bench: Bench, targets: dict[str, Target]) -> dict[str, Any]:
    found = {}
    for name, target in targets.items():
        found[name] = await bench.idle_memory(target, bench.options.idle)
        say(
            f"idle memory {name}: {found[name]['kib_per_connection']} KiB/connection"
            f" at {found[name]['connections']:,} {found[name]['problems'] or ''}"
        )
    return found


async def idle_memory(
    options: argparse.Namespace, database: DatabaseUrl, workdir: Path
) -> dict[str, Any]:
    """Each server afresh, alone, with idle connections opened in steps."""
    found = {}
    for name in options.servers:
        settings = options.productflo_setting
        with started(name, database, workdir / f"{name}-memory", settings) as target:
            found.update(
                await idle_memory_of(Bench({name: target}, None, workdir, options), {name: target})
            )
    return found


def node_facts() -> dict[str, Any]:
    node = node_executable()
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    lock = json.loads((HERE / "package-lock.json").read_text())["packages"]
    packages = ("socket.io", "socket.io-client", "ws")
    return {
        "node": version.stdout.strip(),
        **{name: lock[f"node_modules/{name}"]["version"] for name in packages},
    }


def environment_facts(where: str, db: dict[str, str], files: int) -> dict[str, Any]:
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "uvicorn": importlib.metadata.version("uvicorn"),
        "fastapi": importlib.metadata.version("fastapi"),
        "websockets": importlib.metadata.version("websockets"),
        **node_facts(),
        "database": where,
        **db,
        "rlimit_nofile": files,
        **code_facts(),
    }


def summarize(
    options: argparse.Namespace,
    measured: dict[str, Any],
    memory: dict[str, Any],
    facts: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "benchmark": "fanout",
        "command": " ".join(["python -m bench.fanout", *sys.argv[1:]]),
        "config": {
            "servers": options.servers,
            "rounds": options.rounds,
            "clients": options.clients,
            "room_size": options.room_size,
            "messages": options.messages,
            "deliveries_per_run": options.clients * options.room_size * options.messages,
            "load_processes": options.load_processes,
            "idle_connections": options.idle,
            "idle_steps": options.idle_steps,
            "wait_quiet_s": options.wait_quiet,
            "rerun_busy": options.rerun_busy,
            "productflo_settings": {
                "PRODUCTFLO_RATE_LIMIT": RATE_LIMIT,
                **options.productflo_setting,
            },
            "order": "each mode: rounds of one run per server, the order rotating per round",
        },
        "environment": facts,
        "wall_seconds": round(seconds, 1),
        "flat_out": report.mode_summary(*measured["flat"]),
    }
    if measured["rate"]:
        summary["offered"] = {
            "rate_messages_per_s": measured["rate"],
            "basis": f"{options.offered_rate} msgs/s given"
            if options.offered_rate
            else f"{options.offered_fraction:.0%} of productflo's median flat-out message rate",
            "servers": report.mode_summary(*measured["offered"]),
        }
    summary["idle_memory"] = memory
    summary["server_logs"] = measured["logs"]
    summary["lossless"] = report.lossless(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    files = raise_file_limit()
    check_file_limit(files, options.idle)
    node_executable()
    began = time.perf_counter()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="productflo-bench-fanout-") as scratch:
        workdir = Path(scratch)
        with (
            postgres_root(workdir) as (root, where),
            fresh_database(root, f"productflo_bench_{tag}_fanout") as database,
        ):
            facts = environment_facts(where, asyncio.run(database_facts(database)), files)
            measured = asyncio.run(throughput(options, database, workdir))
            memory = measured["memory"]
            if options.idle and not options.quick:
                memory = asyncio.run(idle_memory(options, database, workdir))
    summary = summarize(options, measured, memory, facts, time.perf_counter() - began)
    print(report.tables(summary))
    if not options.no_output:
        write_results(summary, options.output)
        report.plot(summary, options.plot)
        say(f"results: {options.output}, {options.plot}")
    return 0 if summary["lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())
