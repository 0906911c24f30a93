"""What the benchmarks share: a database to measure on, the real server in a subprocess."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from productflo import migrate
from productflo.database import DatabaseUrl, start_embedded
from productflo.settings import Settings

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServerProcess:
    pid: int
    port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- the database --------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_root(workdir: Path) -> Iterator[tuple[DatabaseUrl, str]]:
    """A server's maintenance database: PRODUCTFLO_DATABASE_URL's, or an embedded server's."""
    given = os.environ.get("PRODUCTFLO_DATABASE_URL")
    if given:
        yield DatabaseUrl.parse(given), "PRODUCTFLO_DATABASE_URL"
        return
    embedded = start_embedded(Settings(data_dir=workdir / "embedded", database_url=None))
    try:
        yield embedded.url, "embedded"
    finally:
        embedded.stop()  # now: its exit hook would run after the directory is gone


def with_database(root: DatabaseUrl, name: str) -> DatabaseUrl:
    return root.with_database(name)


async def _admin(root: DatabaseUrl, statement: str) -> None:
    connection = await asyncpg.connect(root.dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database(root: DatabaseUrl, name: str) -> Iterator[DatabaseUrl]:
    """A new database, migrated to head, dropped afterwards."""
    asyncio.run(_admin(root, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    asyncio.run(_admin(root, f"CREATE DATABASE {name}"))
    try:
        url = with_database(root, name)
        migrate.upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(root, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def database_facts(url: DatabaseUrl) -> dict[str, str]:
    connection = await asyncpg.connect(url.dsn)
    try:
        facts = {"server_version": str(await connection.fetchval("SHOW server_version"))}
        for name in ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay"):
            facts[name] = str(await connection.fetchval(f"SHOW {name}"))
        return facts
    finally:
        await connection.close()


# -- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "productflo"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "productflo"]
    return [*command, "serve", "--port", str(port), "--no-migrate"]


def server_environment(
    database: DatabaseUrl, workdir: Path, settings: dict[str, str]
) -> dict[str, str]:
    return {
        **os.environ,
        "PRODUCTFLO_DATABASE_URL": database.dsn,
        "PRODUCTFLO_DATA_DIR": str(workdir / "server-data"),
        "PRODUCTFLO_JWT_SECRET": uuid.uuid4().hex * 2,
        **settings,
    }


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


def wait_ready(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
        with contextlib.suppress(OSError, urllib.error.URLError):
            http_get(base + "/readyz", timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT} s")


@contextlib.contextmanager
def running_server(
    database: DatabaseUrl, workdir: Path, settings: dict[str, str]
) -> Iterator[ServerProcess]:
    """`productflo serve` in a subprocess with PRODUCTFLO_* `settings`; its log in workdir."""
    port = free_port()
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            server_command(port),
            env=server_environment(database, workdir, settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            server = ServerProcess(process.pid, port)
            wait_ready(process, server.http)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB, from /proc."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


def add_run_options(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every throughput benchmark takes: rounds, their timing, where results go."""
    parser.add_argument("--runs", type=int, default=5, help="rounds; medians are reported (5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted (1)")
    parser.add_argument("--output", type=Path, default=results, help=f"JSON results ({results})")
    parser.add_argument("--no-output", action="store_true", help="do not write the JSON results")
