"""Collaborative documents: opening a long history, and 20 editors at once beside a relay.

    .venv/bin/python -m bench.docs_throughput [--updates 100000] [--opens 9] \
        [--editors 20] [--window 1] [--runs 5] [--duration 5] [--warmup 1]

Both parts run against `productflo serve` (a subprocess) on one fresh database (an embedded
PostgreSQL, or PRODUCTFLO_DATABASE_URL's server), and measure under /tmp/bench.lock (flock), so
that no other benchmark runs at the same time.

1. Open. The log is written directly (EventStore.append, 2,000 events a transaction): two
   documents of the same room, each with the same --updates single-keystroke Yjs updates (pycrdt
   editing sessions of 500 keystrokes, each session a new Yjs client of one of five users, typing
   at a cursor, one keystroke in ten a backspace). The server starts, and its documents projection
   folds them, snapshotting each document every 1,000 updates; once its checkpoint is at the head,
   the second document's row is deleted from the projection's table. That document is then what a
   document with no snapshot is when the projection has not reached it yet (SPEC: a document is
   current whatever the projection's lag): `Documents.current` finds no row, so it folds the
   whole history from the log; the projection does not write the row again, as no update of that
   document follows. The first document opens from its snapshot and the few updates after it.
   Each round, one WebSocket client sends `doc_open` (no state vector) for each document in turn
   (alternating which goes first) and times it until its `doc_sync` arrives; the sync is then
   checked to hold the whole text and version. One open of each, not counted, comes first.
2. Editors. Each run, --editors Yjs editors (Node: bench/docs_editors.mjs, the vendored official
   yjs and the `ws` package, every editor in one process) open a new document and type into it,
   each with at most --window updates unacknowledged, applying everyone else's updates; counted
   over --duration s after --warmup s: updates acknowledged and delivered per second, latency from
   the send to the sender's own copy (its acknowledgement) and to each other editor, and CPU per
   acknowledged update of the server process (and of PostgreSQL, for productflo) in that window.
   The baseline, in the same rounds and with the same editors, is bench/docs_relay.py: a
   y-websocket-style relay that keeps documents in memory and stores nothing. A run counts only
   when every update sent reached every editor and all their texts are equal.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
from pycrdt import Doc, Text
from websockets.asyncio.client import connect

from bench._harness import (
    ServerProcess,
    database_facts,
    fresh_database,
    postgres_root,
    running_server,
)
from bench.append_throughput import (
    RATE_LIMIT,
    Meters,
    environment_facts,
    postmaster,
    scrape,
    write_results,
)
from bench.fanout.measure import Histogram, merge
from bench.fanout.report import percentiles
from bench.fanout.servers import ROOT, node_executable, subprocess_server
from bench.socketio_throughput import code_facts, machine_busy, server_log_facts
from productflo import documents
from productflo.database import DatabaseUrl
from productflo.documents import TEXT
from productflo.events.models import NewEvent, room_stream
from productflo.events.store import EventStore
from productflo.projections.framework import status

RESULTS = Path(__file__).resolve().parent / "results" / "docs_throughput.json"
EDITORS = Path(__file__).resolve().parent / "docs_editors.mjs"
LOCK = Path("/tmp/bench.lock")
ROOM = "docs-bench"
SNAPSHOTTED, UNSNAPSHOTTED = "history-snapshotted", "history-no-snapshot"
WRITERS = 5  # users whose editing sessions make the history
SESSION_KEYSTROKES = 500
BATCH = 2000  # events a transaction when writing the history
KEYS = "abcdefghijklmnopqrstuvwxyz     \n"
CATCH_UP_TIMEOUT = 600.0
EDITOR_SETUP_TIMEOUT = 60.0
DRAIN = 30.0  # seconds the editors wait, after the window, for every update to arrive
IDLE_CORES = 0.05  # the server counts as idle below this, over IDLE_STEP s
IDLE_STEP = 0.25
IDLE_TIMEOUT = 60.0


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Hold /tmp/bench.lock (flock) while measuring: one benchmark at a time on this machine."""
    with LOCK.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK} (another benchmark is measuring)", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- 1. opening a long history -------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    updates: list[tuple[str, bytes]]  # (user, Yjs update), one keystroke each, in order
    text: str


def keystrokes(count: int, seed: int = 15) -> History:
    """`count` single-keystroke updates: editing sessions of SESSION_KEYSTROKES keystrokes, each
    a new Yjs client (as a browser tab is) of one of WRITERS users, typing at a cursor."""
    rng = random.Random(seed)
    merged: Doc[Any] = Doc()
    updates: list[tuple[str, bytes]] = []
    session = 0
    while len(updates) < count:
        session += 1
        user = f"writer-{session % WRITERS}"
        typed = _session(merged, rng, min(SESSION_KEYSTROKES, count - len(updates)))
        updates.extend((user, update) for update in typed)
    return History(updates, str(merged.get(TEXT, type=Text)))


def _session(merged: Doc[Any], rng: random.Random, keys: int) -> list[bytes]:
    """One editing session on a copy of `merged`, then merged into it: its updates."""
    doc: Doc[Any] = Doc(client_id=rng.getrandbits(32))
    doc.apply_update(merged.get_update())
    text = doc.get(TEXT, type=Text)
    made: list[bytes] = []
    doc.observe(lambda event: made.append(event.update))
    cursor = rng.randint(0, len(text))
    for _ in range(keys):
        if cursor > 0 and rng.random() < 0.1:
            del text[cursor - 1 : cursor]
            cursor -= 1
        else:
            text.insert(cursor, rng.choice(KEYS))
            cursor += 1
    merged.apply_update(doc.get_update())
    return made


def doc_update_event(doc_id: str, user: str, update: bytes) -> NewEvent:
    """A doc_update as the session appends it (productflo.session: data and metadata)."""
    data = {"doc_id": doc_id, "update": documents.encode(update)}
    metadata = {"user_id": user, "transport": "websocket", "authenticated": False}
    return NewEvent(room_stream(ROOM), "doc_update", data, metadata)


async def write_history(url: DatabaseUrl, history: History) -> int:
    """Both documents' histories in the log (after the writers' joins); the head position."""
    store = EventStore(url.dsn)
    await store.start()
    try:
        joins = [
            NewEvent(room_stream(ROOM), "join", {}, {"user_id": f"writer-{n}"})
            for n in range(WRITERS)
        ]
        await store.append(joins)
        for doc_id in (SNAPSHOTTED, UNSNAPSHOTTED):
            for start in range(0, len(history.updates), BATCH):
                chunk = history.updates[start : start + BATCH]
                await store.append([doc_update_event(doc_id, u, raw) for u, raw in chunk])
        return await store.head()
    finally:
        await store.close()


async def caught_up(url: DatabaseUrl, head: int) -> float:
    """Wait until the documents projection's checkpoint reaches `head`; the seconds it took."""
    started = time.perf_counter()
    pool = await asyncpg.create_pool(url.dsn, min_size=1, max_size=1)
    try:
        while time.perf_counter() - started < CATCH_UP_TIMEOUT:
            (documents,) = await status(pool, ["documents"])
            if documents.position >= head:
                return time.perf_counter() - started
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the documents projection did not reach {head} in time")
    finally:
        await pool.close()


SNAPSHOT_ROW = "updates, snapshot_updates, length(snapshot) AS snapshot_bytes"


async def snapshot_row(url: DatabaseUrl, doc_id: str, *, forget: bool = False) -> dict[str, Any]:
    """What the documents projection holds of a document: its count of updates, those in its
    snapshot and the snapshot's size. With `forget`, the row is deleted as it is read (the
    projection's checkpoint stays where it is)."""
    statement = (
        f"DELETE FROM documents WHERE room_id = $1 AND doc_id = $2 RETURNING {SNAPSHOT_ROW}"
        if forget
        else f"SELECT {SNAPSHOT_ROW} FROM documents WHERE room_id = $1 AND doc_id = $2"
    )
    connection = await asyncpg.connect(url.dsn)
    try:
        row = await connection.fetchrow(statement, ROOM, doc_id)
    finally:
        await connection.close()
    if row is None:
        raise RuntimeError(f"the documents projection has no row for {doc_id}")
    return dict(row)


@dataclass(frozen=True)
class Opened:
    seconds: float
    frame_bytes: int
    sync: dict[str, Any]


async def open_document(client: Any, doc_id: str, tag: str) -> Opened:
    """Send doc_open (no state vector); the time until its doc_sync has arrived."""
    frame = {"code": "doc_open", "room_id": ROOM, "client_msg_id": tag, "data": {"doc_id": doc_id}}
    started = time.perf_counter()
    await client.send(json.dumps(frame))
    while True:
        text = await client.recv()
        seconds = time.perf_counter() - started
        message: dict[str, Any] = json.loads(text)
        if message.get("status") == "error":
            raise RuntimeError(f"doc_open refused: {message}")
        if message.get("code") == "doc_sync" and message.get("client_msg_id") == tag:
            return Opened(seconds, len(text), message)


def check_sync(opened: Opened, history: History) -> None:
    """The doc_sync holds the whole document: its text, and a version of every update."""
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(opened.sync["data"]["update"]))
    if str(doc.get(TEXT, type=Text)) != history.text:
        raise RuntimeError(f"{opened.sync['data']['doc_id']}: the sync's text is not the history's")
    if opened.sync["data"]["version"] != len(history.updates):
        raise RuntimeError(f"version {opened.sync['data']['version']}, not {len(history.updates)}")


async def opens(server: ServerProcess, history: History, rounds: int) -> dict[str, list[Opened]]:
    """One uncounted open of each document, then `rounds` of each, alternating the order."""
    timed: dict[str, list[Opened]] = {SNAPSHOTTED: [], UNSNAPSHOTTED: []}
    url = f"{server.ws}/ws?user_id=reader"
    async with connect(url, max_size=None, compression=None) as client:
        await client.recv()  # the welcome
        for doc_id in timed:
            check_sync(await open_document(client, doc_id, f"warm-{doc_id}"), history)
        for round_no in range(rounds):
            order = list(timed) if round_no % 2 == 0 else list(reversed(timed))
            for doc_id in order:
                opened = await open_document(client, doc_id, f"open-{round_no}-{doc_id}")
                check_sync(opened, history)
                timed[doc_id].append(opened)
                print(
                    f"open {round_no + 1}/{rounds} {doc_id}: {1000 * opened.seconds:8.1f} ms"
                    f" ({opened.frame_bytes:,} bytes)",
                    file=sys.stderr,
                )
    return timed


def open_summary(timed: dict[str, list[Opened]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for doc_id, runs in timed.items():
        ms = [round(1000 * run.seconds, 1) for run in runs]
        summary[doc_id] = {
            "open_ms_median": round(statistics.median(ms), 1),
            "open_ms_runs": ms,
            "doc_sync_frame_bytes": runs[0].frame_bytes,
        }
    with_, without = (summary[d]["open_ms_median"] for d in (SNAPSHOTTED, UNSNAPSHOTTED))
    summary["no_snapshot_over_snapshot"] = round(without / with_, 1) if with_ else None
    return summary


# -- 2. editors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    pid: int
    ws: str  # the /ws endpoint's URL
    metrics: ServerProcess | None = None  # productflo's, for its group-commit counters


@dataclass(frozen=True)
class EditorsRun:
    server: str
    round_no: int
    result: dict[str, Any]  # docs_editors.mjs's
    cpu_s: dict[str, float]  # CPU seconds in the window, by component (and `wall`)
    server_cpu_after_s: float  # the server's CPU after the window, until it was idle
    seconds: float
    events_per_commit: float | None  # productflo's group commits in the window

    @property
    def failures(self) -> list[str]:
        result = self.result
        problems = []
        if not result["drained"]:
            problems.append(f"{result['undelivered']} deliveries never arrived")
        if not result["converged"]:
            problems.append("the editors' texts differ")
        if result["error_count"]:
            problems.append(f"{result['error_count']} errors: {result['errors'][:3]}")
        return problems

    def row(self) -> dict[str, Any]:
        acked = self.result["acked"]
        ack = percentiles(_histogram(self.result["ack"]))
        delivery = percentiles(_histogram(self.result["delivery"]))
        wall = self.cpu_s["wall"]
        row: dict[str, Any] = {
            "acked_per_s": round(acked / self.seconds),
            "delivered_per_s": round(self.result["delivered"] / self.seconds),
            "ack_ms_p50": ack["p50"],
            "ack_ms_p99": ack["p99"],
            "delivery_ms_p50": delivery["p50"],
            "delivery_ms_p99": delivery["p99"],
        }
        for name in ("server", "postgres"):
            if name in self.cpu_s and acked:
                row[f"{name}_cpu_us_per_update"] = round(1e6 * self.cpu_s[name] / acked, 1)
        for name in ("server", "postgres", "load", "others"):
            if name in self.cpu_s:
                row[f"{name}_cores"] = round(self.cpu_s[name] / wall, 2)
        row["server_cpu_after_window_s"] = round(self.server_cpu_after_s, 2)
        if self.events_per_commit is not None:
            row["events_per_commit"] = round(self.events_per_commit, 1)
        return row


def _histogram(raw: dict[str, int]) -> Histogram:
    histogram: Histogram = {}
    merge(histogram, raw)
    return histogram


async def _line(stream: asyncio.StreamReader, within: float) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), within)
    if not line:
        raise RuntimeError("the editors exited without a result")
    message: dict[str, Any] = json.loads(line)
    if message.get("event") == "failed":
        raise RuntimeError(f"the editors failed: {message['error']}")
    return message


def cpu_meters(target: Target, load: psutil.Process, postgres: psutil.Process | None) -> Meters:
    return Meters(psutil.Process(target.pid), load, postgres)


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds by component between two snapshots; `others`: the rest of the machine."""
    used = {name: after[name] - before[name] for name in after if name in before}
    ours = sum(used.get(name, 0.0) for name in ("server", "load", "postgres"))
    used["others"] = max(0.0, used.pop("machine") - ours)
    used.pop("steal", None)
    return used


async def idle_after(server: psutil.Process) -> float:
    """Wait for the server to go idle (its projections catching up); the CPU seconds till then."""
    began = time.perf_counter()
    first = last = _cpu(server)
    while time.perf_counter() - began < IDLE_TIMEOUT:
        await asyncio.sleep(IDLE_STEP)
        now = _cpu(server)
        if (now - last) / IDLE_STEP < IDLE_CORES:
            return now - first
        last = now
    return last - first


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def editors_run(
    target: Target, round_no: int, options: argparse.Namespace, postgres: psutil.Process | None
) -> EditorsRun:
    tag = f"r{round_no}-{target.name}-{uuid.uuid4().hex[:6]}"
    config = {
        "url": target.ws,
        "room": f"editors-{tag}",
        "doc": f"doc-{tag}",
        "editors": options.editors,
        "window": options.window,
        "warmup": options.warmup,
        "duration": options.duration,
        "drain": DRAIN,
        "tag": tag,
    }
    process = await asyncio.create_subprocess_exec(
        node_executable(),
        str(EDITORS),
        json.dumps(config),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        await _line(process.stdout, EDITOR_SETUP_TIMEOUT)  # every editor synced
        load = psutil.Process(process.pid)
        meters = cpu_meters(target, load, postgres if target.name == "productflo" else None)
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        await asyncio.sleep(options.warmup)
        before = {**meters.snapshot(), **machine_busy()}
        commits_before = await scrape(target.metrics) if target.metrics else None
        await asyncio.sleep(options.duration)
        after = {**meters.snapshot(), **machine_busy()}
        commits_after = await scrape(target.metrics) if target.metrics else None
        result = await _line(process.stdout, DRAIN + 30)
        process.stdin.write(b"close\n")
        await process.stdin.drain()
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    run = EditorsRun(
        target.name,
        round_no,
        result,
        spent(before, after),
        await idle_after(psutil.Process(target.pid)),
        options.duration,
        _per_commit(commits_before, commits_after),
    )
    row = run.row()
    print(
        f"round {round_no} {target.name:10}: {row['acked_per_s']:6,} acked/s"
        f" {row['delivered_per_s']:8,} delivered/s  ack p50/p99 {row['ack_ms_p50']}/"
        f"{row['ack_ms_p99']} ms  delivery p50/p99 {row['delivery_ms_p50']}/"
        f"{row['delivery_ms_p99']} ms  server {row.get('server_cpu_us_per_update')} us/update"
        f"{'  FAILED: ' + '; '.join(run.failures) if run.failures else ''}",
        file=sys.stderr,
    )
    return run


def _per_commit(
    before: tuple[float, float, float] | None, after: tuple[float, float, float] | None
) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def editors_summary(runs: list[EditorsRun]) -> dict[str, Any]:
    by_server: dict[str, list[EditorsRun]] = {}
    for run in runs:
        by_server.setdefault(run.server, []).append(run)
    summary: dict[str, Any] = {}
    for server, done in by_server.items():
        rows = [run.row() for run in done]
        medians = {
            key: round(statistics.median(row[key] for row in rows), 2)
            for key in rows[0]
            if all(row.get(key) is not None for row in rows)
        }
        pooled_ack: Histogram = {}
        pooled_delivery: Histogram = {}
        for run in done:
            merge(pooled_ack, run.result["ack"])
            merge(pooled_delivery, run.result["delivery"])
        summary[server] = {
            "median": medians,
            "pooled_ack_ms": percentiles(pooled_ack),
            "pooled_delivery_ms": percentiles(pooled_delivery),
            "runs": rows,
            "failures": [f"round {run.round_no}: {p}" for run in done for p in run.failures],
        }
    if "productflo" in summary and "relay" in summary:
        ours, theirs = summary["productflo"]["median"], summary["relay"]["median"]
        summary["productflo_over_relay"] = {
            key: round(ours[key] / theirs[key], 2)
            for key in ("acked_per_s", "delivered_per_s", "server_cpu_us_per_update")
            if ours.get(key) and theirs.get(key)
        }
    return summary


# -- main ----------------------------------------------------------------------------------------


async def measure(
    options: argparse.Namespace,
    history: History | None,
    server: ServerProcess,
    targets: list[Target],
    url: DatabaseUrl,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if history is not None:
        timed = await opens(server, history, options.opens)
        results["open"] = {
            "updates": len(history.updates),
            "text_chars": len(history.text),
            "snapshotted_row": await snapshot_row(url, SNAPSHOTTED),
            **open_summary(timed),
        }
    if options.runs:
        postgres = await postmaster(url)
        runs = []
        for round_no in range(1, options.runs + 1):
            order = targets if round_no % 2 else list(reversed(targets))
            for target in order:
                runs.append(await editors_run(target, round_no, options, postgres))
        results["editors"] = {
            "editors": options.editors,
            "window": options.window,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "client": "node (bench/docs_editors.mjs: vendored yjs 13.6.33, ws), one process",
            **editors_summary(runs),
        }
    return results


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.docs_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--updates", type=int, default=100_000, help="history (100000; 0: skip)")
    parser.add_argument("--opens", type=int, default=9, help="timed opens of each document (9)")
    parser.add_argument("--editors", type=int, default=20, help="concurrent editors (20)")
    parser.add_argument("--window", type=int, default=1, help="unacknowledged per editor (1)")
    parser.add_argument("--runs", type=int, default=5, help="editor rounds (5; 0: skip)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds counted per run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted (1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    load_average = os.getloadavg()
    history = None
    if options.updates:
        started = time.perf_counter()
        history = keystrokes(options.updates)
        print(
            f"{len(history.updates):,} keystrokes made in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as scratch:
        workdir = Path(scratch)
        with (
            postgres_root(workdir) as (root, where),
            fresh_database(root, f"productflo_bench_docs_{os.getpid()}") as url,
        ):
            facts: dict[str, Any] = {}
            if history is not None:
                started = time.perf_counter()
                head = asyncio.run(write_history(url, history))
                facts["history_written_s"] = round(time.perf_counter() - started, 1)
            (workdir / "productflo").mkdir()
            (workdir / "relay").mkdir()
            settings = {"PRODUCTFLO_RATE_LIMIT": RATE_LIMIT}
            relay_command = [sys.executable, "-m", "bench.docs_relay"]
            with (
                running_server(url, workdir / "productflo", settings) as server,
                subprocess_server("relay", relay_command, workdir / "relay") as relay,
            ):
                if history is not None:
                    facts["projection_caught_up_s"] = round(asyncio.run(caught_up(url, head)), 1)
                    facts["forgotten_row"] = asyncio.run(
                        snapshot_row(url, UNSNAPSHOTTED, forget=True)
                    )
                    print(f"prepared: {facts}", file=sys.stderr)
                targets = [
                    Target("productflo", server.pid, f"{server.ws}/ws", server),
                    Target("relay", relay.pid, f"ws://127.0.0.1:{relay.port}/ws"),
                ]
                with bench_lock():
                    results = asyncio.run(measure(options, history, server, targets, url))
            summary = {
                "benchmark": "docs_throughput",
                "command": "python -m bench.docs_throughput " + " ".join(argv or sys.argv[1:]),
                "environment": environment_facts(
                    where, asyncio.run(database_facts(url)), load_average
                ),
                "code": code_facts(),
                "preparation": facts,
                **results,
                "server_log": server_log_facts(workdir / "productflo" / "server.log"),
            }
    write_results(summary, options.output)
    print(json.dumps(summary, indent=2))
    print(f"results: {options.output}", file=sys.stderr)
    failures = summary.get("editors", {})
    failed = [
        f for name in ("productflo", "relay") for f in failures.get(name, {}).get("failures", [])
    ]
    if failed:
        print(f"failed runs: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
