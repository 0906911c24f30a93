"""What one client that stops reading costs the server: its memory while 50 MB go to its room.

Each run starts `productflo serve` in a subprocess and sends SEND_MB of chats (16 KB each) to a
room twice: first with one fast reader in it (the baseline), then with a second member that
connected and stopped reading. The sender keeps at most WINDOW messages ahead of the fast reader,
so the server is never asked to hold anything for the clients that read. Reported per phase: the
server's resident memory before and after, its peak (VmHWM), and for the stalled client, when it
was closed 1013 (after how many MB) and its close code.

    .venv/bin/python -m bench.slow_client_memory [--runs 3] [--send-mb 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench import _harness

RESULTS = Path(__file__).parent / "results" / "slow_client_memory.json"
ROOM = "memory"
PAYLOAD_CHARS = 16_000
WINDOW = 32
TIMEOUT = 60.0


async def _joined(url: str) -> ClientConnection:
    client = await connect(url, compression=None, max_queue=4, open_timeout=TIMEOUT)
    await client.recv()  # the welcome
    await client.send(json.dumps({"code": "join", "room_id": ROOM}))
    while True:
        message = json.loads(await client.recv())
        if message["data"].get("details", {}).get("action") == "join":
            return client


def _dropped(server: _harness.ServerProcess) -> float:
    """The server's count of connections closed 1013."""
    for line in _harness.http_get(server.http + "/metrics").splitlines():
        if line.startswith("productflo_slow_clients_closed_total "):
            return float(line.split()[1])
    return 0.0


async def _phase(server: _harness.ServerProcess, send_mb: float, stalled: bool) -> dict[str, Any]:
    base = server.ws + "/ws?user_id="
    tag = secrets.token_hex(3)
    slow = await _joined(base + f"slow-{tag}") if stalled else None
    fast = await _joined(base + f"fast-{tag}")
    sender = await _joined(base + f"sender-{tag}")
    before = _harness.memory_kib(server.pid)
    received = 0
    progress = asyncio.Event()

    async def read(client: ClientConnection, count: bool) -> None:
        nonlocal received
        async for raw in client:
            if count and json.loads(raw)["code"] == "chat_response":
                received += 1
                progress.set()

    readers = [asyncio.create_task(read(fast, True)), asyncio.create_task(read(sender, False))]
    messages = int(send_mb * 1_000_000 / PAYLOAD_CHARS)
    dropped_before = _dropped(server)
    closed_after_mb: float | None = None
    for sent in range(messages):
        while sent - received >= WINDOW:
            progress.clear()
            await asyncio.wait_for(progress.wait(), TIMEOUT)
        text = secrets.token_hex(PAYLOAD_CHARS // 2)
        await sender.send(json.dumps({"code": "chat", "room_id": ROOM, "data": {"message": text}}))
        if slow is not None and closed_after_mb is None and sent % 20 == 0:
            if _dropped(server) > dropped_before:
                closed_after_mb = round(sent * PAYLOAD_CHARS / 1e6, 1)
    while received < messages:
        progress.clear()
        await asyncio.wait_for(progress.wait(), TIMEOUT)
    after = _harness.memory_kib(server.pid)
    result: dict[str, Any] = {
        "stalled_client": stalled,
        "rss_before_kib": before["VmRSS"],
        "rss_after_kib": after["VmRSS"],
        "peak_kib": after["VmHWM"],
    }
    if slow is not None:
        code = None
        try:  # read what the kernel buffered for it, then its close frame
            async with asyncio.timeout(TIMEOUT):
                async for _ in slow:
                    pass
        except ConnectionClosed:
            pass
        code = slow.close_code
        result["stalled_close_code"] = code
        result["stalled_closed_after_mb"] = closed_after_mb
        await slow.close()
    for task in readers:
        task.cancel()
    await fast.close()
    await sender.close()
    return result


async def _run(server: _harness.ServerProcess, send_mb: float) -> dict[str, Any]:
    baseline = await _phase(server, send_mb, stalled=False)
    stalled = await _phase(server, send_mb, stalled=True)
    return {"baseline": baseline, "stalled": stalled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--send-mb", type=float, default=50.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as directory:
        workdir = Path(directory)
        with _harness.postgres_root(workdir) as (root, source):
            with _harness.fresh_database(root, "productflo_bench_memory") as database:
                for n in range(args.runs):
                    settings = {"PRODUCTFLO_RATE_LIMIT": "100000"}
                    with _harness.running_server(database, workdir, settings) as server:
                        runs.append(asyncio.run(_run(server, args.send_mb)))
                    print(f"run {n + 1}: {json.dumps(runs[-1])}", flush=True)

    def median(phase: str, key: str) -> float:
        return statistics.median(run[phase][key] for run in runs)

    summary = {
        "send_mb": args.send_mb,
        "database": source,
        "runs": runs,
        "median_growth_kib": {
            phase: median(phase, "rss_after_kib") - median(phase, "rss_before_kib")
            for phase in ("baseline", "stalled")
        },
        "median_peak_kib": {phase: median(phase, "peak_kib") for phase in ("baseline", "stalled")},
        "stalled_close_codes": [run["stalled"]["stalled_close_code"] for run in runs],
        "stalled_closed_after_mb": [run["stalled"]["stalled_closed_after_mb"] for run in runs],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
