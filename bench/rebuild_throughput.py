"""Rebuild throughput: each projection rebuilt from a log of N events, beside a raw read of it.

    .venv/bin/python -m bench.rebuild_throughput [--events 1000000] [--rooms 1000]

The log is generated in PostgreSQL (joins, then chats spread over the rooms, one in a hundred
mentioning someone). Each projection is rebuilt with the same code as `productflo projections
rebuild NAME`, then all of them in one pass as `productflo projections rebuild` does; beside it,
in the same run, PostgreSQL reads the raw log two ways: through the same
batched reads the rebuild uses (EventStore.read, 5,000 at a time, decoded into events), and as a
bare `COPY ... TO STDOUT` of the table in position order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench._harness import fresh_database, postgres_root
from productflo.database import DatabaseUrl
from productflo.events.store import EventStore
from productflo.projections import PROJECTIONS
from productflo.projections.framework import REBUILD_BATCH, ensure_tables, rebuild, rebuild_all

RESULTS = Path(__file__).resolve().parent / "results" / "rebuild_throughput.json"

GENERATE = """
INSERT INTO events (position, event_id, stream, version, type, data, metadata, recorded_at)
SELECT i + 1,
       gen_random_uuid(),
       'room:r' || (i % $2),
       i / $2 + 1,
       CASE WHEN i < $2 THEN 'join' ELSE 'chat' END,
       CASE WHEN i < $2 THEN '{}'::jsonb
            ELSE jsonb_build_object(
                'message', 'design note ' || i || CASE WHEN i % 100 = 0
                    THEN ' @u' || ((i + 1) % $2) ELSE '' END,
                'sender', 'u' || (i % $2))
       END,
       jsonb_build_object('user_id', 'u' || (i % $2), 'transport', 'websocket',
                          'authenticated', (i % 2 = 0)),
       now() - make_interval(secs => ($1 - i) / 1000.0)
FROM generate_series(0, $1 - 1) AS i
"""


async def generate(url: DatabaseUrl, events: int, rooms: int) -> None:
    connection = await asyncpg.connect(url.dsn)
    try:
        await connection.execute(GENERATE, events, rooms)
        await connection.execute("UPDATE log_head SET position = $1", events)
        await connection.execute("VACUUM ANALYZE events")
    finally:
        await connection.close()


async def batched_read(store: EventStore) -> float:
    """Seconds to read the whole log as a rebuild does, without applying anything."""
    started = time.perf_counter()
    position = 0
    while events := await store.read(position, REBUILD_BATCH):
        position = events[-1].position
    return time.perf_counter() - started


async def copy_read(url: DatabaseUrl) -> float:
    """Seconds for PostgreSQL to stream the whole table out in position order (COPY)."""
    connection = await asyncpg.connect(url.dsn)
    received = 0

    async def discard(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    try:
        started = time.perf_counter()
        await connection.copy_from_query("SELECT * FROM events ORDER BY position", output=discard)
        return time.perf_counter() - started
    finally:
        await connection.close()


async def measure(url: DatabaseUrl, events: int) -> dict[str, Any]:
    store = EventStore(url.dsn)
    await store.start()
    try:
        results: dict[str, Any] = {
            "raw_copy_rows_per_s": round(events / await copy_read(url)),
            "batched_read_events_per_s": round(events / await batched_read(store)),
        }
        for name, projection in PROJECTIONS.items():
            async with store.pool.acquire() as connection:
                await ensure_tables(connection, projection)
            started = time.perf_counter()
            applied = await rebuild(store, projection, lambda position, head: None)
            seconds = time.perf_counter() - started
            results[f"rebuild_{name}_events_per_s"] = round(applied / seconds)
            results[f"rebuild_{name}_seconds"] = round(seconds, 1)
            print(f"{name}: {applied:,} events in {seconds:.1f} s", file=sys.stderr)
        # `productflo projections rebuild` with no name: every projection in one pass.
        started = time.perf_counter()
        applied = await rebuild_all(store, list(PROJECTIONS.values()), lambda at, head: None)
        seconds = time.perf_counter() - started
        separately = sum(results[f"rebuild_{name}_seconds"] for name in PROJECTIONS)
        results["rebuild_all_one_pass_seconds"] = round(seconds, 1)
        results["rebuild_all_one_pass_events_per_s"] = round(applied / seconds)
        results["rebuild_all_separately_seconds"] = round(separately, 1)
        print(f"all, one pass: {applied:,} events in {seconds:.1f} s", file=sys.stderr)
        return results
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as directory:
        workdir = Path(directory)
        with (
            postgres_root(workdir) as (root, source),
            fresh_database(root, "productflo_bench_rebuild") as url,
        ):
            started = time.perf_counter()
            asyncio.run(generate(url, options.events, options.rooms))
            print(
                f"generated {options.events:,} events in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            results = asyncio.run(measure(url, options.events))
    summary = {
        "benchmark": "rebuild_throughput",
        "events": options.events,
        "rooms": options.rooms,
        "database": source,
        **results,
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"results: {options.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
