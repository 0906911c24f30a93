"""Replay throughput: one client resuming N events back, through the real server.

    .venv/bin/python -m bench.replay_throughput [--events 50000,500000] [--runs 5]

For each N of --events, on a database of its own: a room holds N chat events written by another
user; the reader joined before them. Each run
connects the reader to `productflo serve` (a subprocess) with last_event_id = its join and times
the welcome-to-replay_complete stretch: every missed event read from the log, rendered, and sent
over the WebSocket to a client that reads as fast as it can. The baseline, in the same rounds, is
PostgreSQL alone reading the same N rows (all columns, in position order) with asyncpg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from websockets.asyncio.client import connect

from bench._harness import fresh_database, memory_kib, postgres_root, running_server
from productflo.database import DatabaseUrl
from productflo.events.models import NewEvent, room_stream
from productflo.events.store import EventStore

RESULTS = Path(__file__).resolve().parent / "results" / "replay_throughput.json"
SIZES = [50_000, 500_000]  # the issue's: missed events to replay
ROOM = "replay-bench"
MESSAGE = "Has anyone reviewed the latest design update? The enclosure tolerances changed."


async def fill(url: DatabaseUrl, events: int) -> int:
    """The reader joins, then the writer sends `events` chats; returns the reader's join."""
    store = EventStore(url.dsn)
    await store.start()
    try:
        stream = room_stream(ROOM)
        join = await store.append([NewEvent(stream, "join", {}, {"user_id": "reader"})])
        batch = 2000
        for start in range(0, events, batch):
            chats = [
                NewEvent(
                    stream,
                    "chat",
                    {"message": f"{MESSAGE} #{n}", "sender": "writer"},
                    {"user_id": "writer", "transport": "websocket"},
                )
                for n in range(start, min(start + batch, events))
            ]
            await store.append(chats)
        return join[0].event.position
    finally:
        await store.close()


async def resume(ws: str, after: int) -> tuple[float, int]:
    """Seconds from the welcome to replay_complete, and the number of events replayed."""
    url = f"{ws}/ws?user_id=reader&last_event_id={after}"
    async with connect(url, max_size=None, compression=None) as client:
        json.loads(await client.recv())  # the welcome
        started = time.perf_counter()
        count = 0
        while True:
            message = json.loads(await client.recv())
            if message["data"].get("details", {}).get("replay_complete"):
                assert message["data"]["details"]["replayed"] == count, message
                return time.perf_counter() - started, count
            count += 1


async def raw_read(url: DatabaseUrl, after: int) -> tuple[float, int]:
    """Seconds for PostgreSQL to hand over the same rows, and how many."""
    connection = await asyncpg.connect(url.dsn)
    try:
        started = time.perf_counter()
        rows = await connection.fetch(
            "SELECT position, event_id, stream, version, type, data, metadata, recorded_at "
            "FROM events WHERE position > $1 ORDER BY position",
            after,
        )
        return time.perf_counter() - started, len(rows)
    finally:
        await connection.close()


def measure(root: DatabaseUrl, workdir: Path, events: int, runs: int) -> dict[str, Any]:
    """`runs` replays of `events` missed events, each beside PostgreSQL reading the same rows."""
    with fresh_database(root, f"productflo_bench_replay_{events}") as url:
        started = time.perf_counter()
        after = asyncio.run(fill(url, events))
        print(f"filled {events:,} events in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        settings = {"PRODUCTFLO_REPLAY_LIMIT": str(events + 10)}
        serverdir = workdir / f"replay-{events}"
        serverdir.mkdir()
        with running_server(url, serverdir, settings) as server:
            replays: list[float] = []
            reads: list[float] = []
            for run in range(1, runs + 1):
                seconds, count = asyncio.run(resume(server.ws, after))
                assert count == events, count
                replays.append(count / seconds)
                seconds, count = asyncio.run(raw_read(url, after))
                reads.append(count / seconds)
                print(
                    f"{events:,} events, run {run}: replay {replays[-1]:9,.0f} ev/s   "
                    f"PostgreSQL read {reads[-1]:9,.0f} rows/s",
                    file=sys.stderr,
                )
            memory = memory_kib(server.pid)
    return {
        "events": events,
        "replay_events_per_s_median": round(statistics.median(replays)),
        "replay_events_per_s_runs": [round(r) for r in replays],
        "postgres_read_rows_per_s_median": round(statistics.median(reads)),
        "postgres_read_rows_per_s_runs": [round(r) for r in reads],
        "server_peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
    }


def event_counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=event_counts,
        default=SIZES,
        help=f"missed events to replay, a comma list ({','.join(map(str, SIZES))})",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as directory:
        workdir = Path(directory)
        with postgres_root(workdir) as (root, source):
            sizes = [measure(root, workdir, events, options.runs) for events in options.events]
    summary: dict[str, Any] = {
        "benchmark": "replay_throughput",
        "database": source,
        "runs": options.runs,
        "sizes": sizes,
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"results: {options.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
