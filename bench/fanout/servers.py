"""The servers under test, each started in a subprocess of its own and stopped after.

A server here is a program and the clients that load it: productflo-socketio is `productflo
serve`, as productflo is, loaded through its Socket.IO endpoint instead of /ws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench._harness import free_port, running_server, wait_ready
from bench.append_throughput import RATE_LIMIT
from productflo.database import DatabaseUrl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SERVERS = ("productflo", "productflo-socketio", "naive", "node")
# How load.js reaches each (its header describes the transports).
TRANSPORTS = {
    "productflo": "ws",
    "productflo-socketio": "socketio-productflo",
    "naive": "ws",
    "node": "socketio",
}
STOP_TIMEOUT = 20.0


def program_of(name: str) -> str:
    """The program a server of SERVERS runs: productflo for both of productflo's."""
    return "productflo" if name.startswith("productflo") else name


@dataclasses.dataclass(frozen=True)
class Target:
    """A running server: its process, and how the load generator reaches it."""

    name: str
    pid: int
    port: int
    log: Path

    @property
    def program(self) -> str:
        return program_of(self.name)

    @property
    def transport(self) -> str:
        return TRANSPORTS[self.name]

    @property
    def url(self) -> str:
        """What load.js connects to: the native /ws endpoint, or the Socket.IO server's origin."""
        if self.transport == "ws":
            return f"ws://127.0.0.1:{self.port}/ws"
        return f"http://127.0.0.1:{self.port}"


def node_executable() -> str:
    """`node`, with bench/fanout's packages installed, or SystemExit saying how to get them."""
    executable = shutil.which("node")
    if executable is None:
        raise SystemExit("node is not on PATH: the fan-out benchmark needs Node.js 20+")
    modules = HERE / "node_modules"
    if not all((modules / name).is_dir() for name in ("socket.io", "socket.io-client", "ws")):
        raise SystemExit(f"{modules} is missing: run `make bench`, or `npm ci` in {HERE}")
    return executable


@contextlib.contextmanager
def subprocess_server(name: str, command: list[str], workdir: Path) -> Iterator[Target]:
    """A server that takes --port and answers GET /readyz once it listens; its output in a log."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(process, f"http://127.0.0.1:{port}")
            yield Target(name, process.pid, port, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def started(
    name: str, database: DatabaseUrl, workdir: Path, settings: dict[str, str] | None = None
) -> Iterator[Target]:
    """One of SERVERS, running until the block ends. productflo is `productflo serve` on
    `database` with its rate limit out of the way, and any other PRODUCTFLO_* `settings`; the
    others store nothing."""
    workdir.mkdir(parents=True, exist_ok=True)
    program = program_of(name)
    if program == "productflo":
        settings = {"PRODUCTFLO_RATE_LIMIT": RATE_LIMIT, **(settings or {})}
        with running_server(database, workdir, settings) as server:
            yield Target(name, server.pid, server.port, workdir / "server.log")
    elif program == "naive":
        with subprocess_server(name, [sys.executable, "-m", "bench.fanout.naive"], workdir) as t:
            yield t
    elif program == "node":
        command = [node_executable(), str(HERE / "server.js")]
        with subprocess_server(name, command, workdir) as target:
            yield target
    else:
        raise ValueError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")


@contextlib.contextmanager
def started_together(
    names: list[str], database: DatabaseUrl, workdir: Path, settings: dict[str, str]
) -> Iterator[dict[str, Target]]:
    """Every one of `names` running until the block ends, one process per program: both of
    productflo's load the same server."""
    with contextlib.ExitStack() as stack:
        processes: dict[str, Target] = {}
        targets = {}
        for name in names:
            program = program_of(name)
            if program not in processes:
                processes[program] = stack.enter_context(
                    started(program, database, workdir / program, settings)
                )
            targets[name] = dataclasses.replace(processes[program], name=name)
        yield targets
