"""`productflo projections status` and `productflo projections rebuild [NAME ...]`."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from productflo.ai.assistant import NAME as ASSISTANT
from productflo.database import DatabaseUrl
from productflo.events.store import EventStore
from productflo.handlers.mentions import Mentions
from productflo.projections import PROJECTIONS
from productflo.projections.framework import ensure_tables, rebuild_all, status

# The log's other consumers: not rebuilt, but their lag is worth seeing (the assistant's is the
# oldest request it has not answered yet).
HANDLERS = (Mentions.name, ASSISTANT)


class UnknownProjection(ValueError):
    pass


def chosen(names: Sequence[str]) -> list[str]:
    """The projections named (all of them when none is), or UnknownProjection."""
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        known = ", ".join(PROJECTIONS)
        raise UnknownProjection(f"unknown projection {', '.join(unknown)} (known: {known})")
    return list(names) or list(PROJECTIONS)


async def print_status(database: DatabaseUrl) -> None:
    store = EventStore(database.dsn)
    await store.start()
    try:
        async with store.pool.acquire() as connection:
            for projection in PROJECTIONS.values():
                await ensure_tables(connection, projection)
        rows = await status(store.pool, [*PROJECTIONS, *HANDLERS])
    finally:
        await store.close()
    print(f"{'projection':<16} {'position':>12} {'head':>12} {'lag':>10}")
    for row in rows:
        print(f"{row.name:<16} {row.position:>12} {row.head:>12} {row.lag:>10}")


async def run_rebuild(database: DatabaseUrl, names: Sequence[str]) -> None:
    """Rebuild the projections named, in one pass over the log (one progress bar)."""
    store = EventStore(database.dsn)
    await store.start()
    label = ", ".join(names)
    bar = tqdm(desc=label, unit="ev", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()

    def progress(position: int, head: int) -> None:
        bar.total = head
        bar.update(position - bar.n)

    try:
        applied = await rebuild_all(store, [PROJECTIONS[name] for name in names], progress)
    finally:
        bar.close()
        await store.close()
    seconds = time.perf_counter() - started
    rate = applied / seconds if seconds > 0 else 0.0
    print(f"{label}: rebuilt from {applied} events in {seconds:.1f} s ({rate:,.0f} events/s)")
