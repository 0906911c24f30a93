"""A short load against a running `productflo serve`, and what the Grafana dashboard's panels
(docs/grafana-dashboard.json) would show for it, worked out from GET /metrics as Prometheus would
(`rate` over the window, `histogram_quantile` over the increase of the buckets).

    productflo serve --port 8731 --workers 2 &
    .venv/bin/python -m bench.dashboard_load http://127.0.0.1:8731 [--clients 10] \
        [--seconds 10] [--rate 20]

--clients native /ws clients join one room, then each sends --rate chats a second for
--seconds, everyone reading everything; /metrics is scraped before the load and once a second
during it (with --workers, any worker answers for all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

ROOM = "dashboard-load"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels)[label]
            found[key] = found.get(key, 0.0) + value
    return found


def quantile(q: float, before: Samples, after: Samples, name: str) -> float:
    """histogram_quantile over the increase between two scrapes, as Prometheus computes it."""
    increase: dict[float, float] = {}
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            increase[bound] = increase.get(bound, 0.0) + value - before.get((sample, labels), 0.0)
    buckets = sorted(increase.items())
    count = buckets[-1][1] if buckets else 0.0
    if not count:
        return float("nan")
    rank, lower, below = q * count, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


async def joined(base: str, n: int) -> ClientConnection:
    """A client in the room, once its join has come back from the log."""
    socket = await connect(f"{base.replace('http', 'ws', 1)}/ws?user_id=load-{n}")
    await socket.recv()  # the welcome
    await socket.send(json.dumps({"code": "join", "room_id": ROOM}))
    while json.loads(await socket.recv())["data"].get("details", {}).get("action") != "join":
        pass
    return socket


async def chat(socket: ClientConnection, n: int, seconds: float, rate: float) -> int:
    async def read() -> None:
        async for _ in socket:
            pass

    reading = asyncio.create_task(read())
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        message = {"code": "chat", "room_id": ROOM, "data": {"message": f"{n}/{sent}"}}
        await socket.send(json.dumps(message))
        sent += 1
        await asyncio.sleep(1 / rate)
    reading.cancel()
    await socket.close()
    return sent


async def run(base: str, clients: int, seconds: float, rate: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base) as http:
        sockets = await asyncio.gather(*(joined(base, n) for n in range(clients)))
        before = parse((await http.get("/metrics")).text)
        started = time.monotonic()
        load = asyncio.gather(*(chat(s, n, seconds, rate) for n, s in enumerate(sockets)))
        during: list[Samples] = []
        while not load.done():
            await asyncio.sleep(1)
            during.append(parse((await http.get("/metrics")).text))
        sent = sum(await load)
    after, elapsed = during[-1], time.monotonic() - started

    def rate_of(name: str) -> float:
        return round((total(after, name) - total(before, name)) / elapsed, 1)

    def quantiles(name: str, scale: float) -> dict[str, float]:
        return {f"p{int(q * 100)}": round(scale * quantile(q, before, after, name), 2)
                for q in (0.5, 0.99)}  # fmt: skip

    lags: dict[str, float] = {}
    for samples in during:
        for projection, lag in by_label(
            samples, "productflo_projection_lag_events", "projection"
        ).items():
            lags[projection] = max(lags.get(projection, 0.0), lag)
    inbound_before = by_label(before, "productflo_inbound_messages_total", "code")
    inbound = {
        code: round((value - inbound_before.get(code, 0.0)) / elapsed, 1)
        for code, value in by_label(after, "productflo_inbound_messages_total", "code").items()
        if value > inbound_before.get(code, 0.0)
    }
    return {
        "sent": sent,
        "window_seconds": round(elapsed, 1),
        "connections": {
            f"{t} {e}": v
            for (name, labels), v in during[0].items()
            if name == "productflo_connections" and v
            for t, e in [(dict(labels)["transport"], dict(labels)["endpoint"])]
        },
        "inbound_per_second": inbound,
        "deliveries_per_second": rate_of("productflo_deliveries_total"),
        "events_appended_per_second": rate_of("productflo_events_appended_total"),
        "tail_lag_per_scrape": [total(s, "productflo_tail_lag_events") for s in during],
        "projection_lag_max": lags,
        "batch_events": quantiles("productflo_append_batch_events", 1),
        "commit_ms": quantiles("productflo_append_transaction_seconds", 1000),
        "closes": {
            c: v for c, v in by_label(after, "productflo_closes_total", "code").items() if v
        },
        "slow_client_closes": total(after, "productflo_slow_clients_closed_total"),
    }


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="chats a second per client")
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = asyncio.run(run(args.base_url, args.clients, args.seconds, args.rate))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
