"""Where an idle connection's memory goes: the server's Python heap per connection, by module.

The fan-out benchmark measures what an idle connection costs (the server's resident set); this
says what it is made of. The server runs in this process (the app `productflo serve` runs, under
its own uvicorn settings, in a thread), tracemalloc on; a separate process opens N native
connections (a bare WebSocket handshake each, then it reads the welcome and nothing more). The
heap is compared before and after, with a garbage collection on both sides, and each allocation
is charged to the first frame of its traceback, by file and by line.

    .venv/bin/python -m bench.idle_memory_profile [--connections 1000] [--top 25]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import uvicorn

from bench import _harness
from productflo.app import create_app
from productflo.cli import websocket_options
from productflo.settings import Settings

RESULTS = Path(__file__).parent / "results" / "idle_memory_profile.json"
FRAMES = 12  # traceback depth kept by tracemalloc
WARM_UP = 50  # connections opened and closed first, so that one-off allocations are not counted

# The client: N connections, each handshaken by hand and left once its welcome has come.
CLIENTS = r"""
import base64, os, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
sockets = []
for n in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?user_id=idle-{n} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b'"last_event_id"' not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"connection {n} closed: {data[:200]!r}")
        data += chunk
    sockets.append(s)
print("ready", flush=True)
sys.stdin.readline()
"""


def _open(port: int, count: int) -> subprocess.Popen[bytes]:
    clients = subprocess.Popen(
        [sys.executable, "-c", CLIENTS, str(port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert clients.stdout is not None
    if clients.stdout.readline().strip() != b"ready":
        raise RuntimeError("the clients did not all connect")
    return clients


def _close(clients: subprocess.Popen[bytes]) -> None:
    assert clients.stdin is not None
    clients.stdin.write(b"\n")
    clients.stdin.flush()
    clients.wait(timeout=60)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def profile(connections: int, top: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="productflo-bench-idle-") as workdir,
        _harness.postgres_root(Path(workdir)) as (root, source),
        _harness.fresh_database(root, "idle_memory") as database,
    ):
        settings = Settings()
        config = uvicorn.Config(
            create_app(settings, database),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            **websocket_options(settings),  # type: ignore[arg-type]
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            _close(_open(port, WARM_UP))
            tracemalloc.start(FRAMES)
            gc.collect()
            before = tracemalloc.take_snapshot()
            clients = _open(port, connections)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            _close(clients)
        finally:
            server.should_exit = True
            thread.join(timeout=20)
    by_file = after.compare_to(before, "filename")
    by_line = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in by_file)
    return {
        "connections": connections,
        "database": source,
        "python_heap_bytes_per_connection": round(total / connections),
        "by_file": [
            {
                "file": _short(stat.traceback[0].filename),
                "bytes_per_connection": round(stat.size_diff / connections),
                "blocks_per_connection": round(stat.count_diff / connections, 1),
            }
            for stat in by_file[:top]
        ],
        "by_line": [
            {
                "line": f"{_short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
                "bytes_per_connection": round(stat.size_diff / connections),
            }
            for stat in by_line[:top]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="idle connections (1000)")
    parser.add_argument("--top", type=int, default=25, help="files and lines listed (25)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results ({RESULTS})")
    parser.add_argument("--no-output", action="store_true", help="do not write the JSON results")
    options = parser.parse_args()
    result = profile(options.connections, options.top)
    per = result["python_heap_bytes_per_connection"] / 1024
    print(f"{result['connections']} idle connections: {per:.1f} KiB of Python heap each")
    print("| bytes/connection | blocks | file |\n|---|---|---|")
    for row in result["by_file"]:
        size, blocks = row["bytes_per_connection"], row["blocks_per_connection"]
        print(f"| {size:,} | {blocks} | {row['file']} |")
    if not options.no_output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {options.output}")


if __name__ == "__main__":
    main()
