"""Migrations: `alembic upgrade head` and `productflo db upgrade`, run as an operator would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from productflo.database import DatabaseUrl

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HEAD = ScriptDirectory(str(ROOT / "migrations")).get_current_head()
SUBPROCESS_TIMEOUT = 60


async def _execute(url: DatabaseUrl, statement: str) -> None:
    connection = await asyncpg.connect(url.dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def empty_database(postgres_root: DatabaseUrl) -> Iterator[DatabaseUrl]:
    """A database with nothing in it, on the test server."""
    name = f"productflo_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_execute(postgres_root, f"CREATE DATABASE {name}"))
    yield postgres_root.with_database(name)
    asyncio.run(_execute(postgres_root, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _environment(url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODUCTFLO_")}
    env["PRODUCTFLO_DATABASE_URL"] = url
    env["PRODUCTFLO_DATA_DIR"] = str(tmp_path / "data")  # never the user's own data directory
    return env


ALEMBIC = [str(BIN / "alembic"), "upgrade", "head"]
PRODUCTFLO = [str(BIN / "productflo"), "db", "upgrade"]
COMMANDS = {"alembic": ALEMBIC, "productflo": PRODUCTFLO}


def run(command: list[str], url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a migration command from the repository root with PRODUCTFLO_DATABASE_URL=url."""
    return subprocess.run(
        command,
        cwd=ROOT,
        env=_environment(url, tmp_path),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def assert_succeeded(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


async def _schema(url: DatabaseUrl) -> dict[str, object]:
    """What a migrated database must hold, as plain values."""
    connection = await asyncpg.connect(url.dsn)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        unique = await connection.fetch(
            """
            SELECT array_agg(a.attname::text ORDER BY k.ord) AS columns
            FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = 'events'::regclass AND i.indisunique
            GROUP BY i.indexrelid
            """
        )
        triggers = await connection.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"
        )
        return {
            "tables": [r["tablename"] for r in tables],
            "unique": sorted(tuple(r["columns"]) for r in unique),
            "triggers": sorted(r["tgname"] for r in triggers),
            "versions": [r[0] for r in await connection.fetch("SELECT * FROM alembic_version")],
            "head": [tuple(r) for r in await connection.fetch("SELECT position FROM log_head")],
        }
    finally:
        await connection.close()


EXPECTED = {
    "tables": ["alembic_version", "events", "log_head", "projection_checkpoints"],
    "unique": [("event_id",), ("position",), ("stream", "version")],
    "triggers": ["events_no_truncate", "events_no_update_or_delete"],
    "versions": [HEAD],
    "head": [(0,)],
}


def schema(url: DatabaseUrl) -> dict[str, object]:
    return asyncio.run(_schema(url))


@pytest.mark.parametrize("command", list(COMMANDS.values()), ids=list(COMMANDS))
def test_upgrade_migrates_an_empty_database_and_is_harmless_when_run_again(
    empty_database: DatabaseUrl, tmp_path: Path, command: list[str]
) -> None:
    assert_succeeded(run(command, empty_database.dsn, tmp_path))
    assert schema(empty_database) == EXPECTED
    assert_succeeded(run(command, empty_database.dsn, tmp_path))
    assert schema(empty_database) == EXPECTED


def test_a_database_migrated_by_one_command_is_current_for_the_other(
    empty_database: DatabaseUrl, tmp_path: Path
) -> None:
    assert_succeeded(run(PRODUCTFLO, empty_database.dsn, tmp_path))
    current = run([str(BIN / "alembic"), "current"], empty_database.dsn, tmp_path)
    assert_succeeded(current)
    assert f"{HEAD} (head)" in current.stdout


def test_upgrades_started_together_on_an_empty_database_all_succeed(
    empty_database: DatabaseUrl, tmp_path: Path
) -> None:
    """Several servers started at once on a new database: they must not race to create tables."""
    env = _environment(empty_database.dsn, tmp_path)
    finished = asyncio.run(_upgrade_together(empty_database, 3, env))
    assert [(code, err) for code, err in finished if code] == []
    assert schema(empty_database) == EXPECTED


async def _upgrade_together(
    url: DatabaseUrl, count: int, env: dict[str, str]
) -> list[tuple[int, str]]:
    """Run `count` upgrades held at their first CREATE and then released at once: (exit, stderr).

    The gate is a transaction that drops schema public and then rolls back: CREATE in a schema
    waits for a lock on the schema, so every upgrade that got as far as creating a table (or as
    far as waiting for another upgrade) waits at the gate, and all are released in one instant.
    """
    processes: list[asyncio.subprocess.Process] = []
    gate = await asyncpg.connect(url.dsn)
    observer = await asyncpg.connect(url.dsn)  # outside the gate's transaction and its snapshot
    try:
        async with asyncio.timeout(SUBPROCESS_TIMEOUT):
            await gate.execute("BEGIN; DROP SCHEMA public")
            for _ in range(count):
                processes.append(
                    await asyncio.create_subprocess_exec(
                        *PRODUCTFLO, cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE
                    )
                )
            await _until_all_wait(observer, processes)
            await gate.execute("ROLLBACK")
            outputs = [await p.communicate() for p in processes]
    finally:
        await gate.close()
        await observer.close()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return [(_exit_code(p), err.decode()) for p, (_, err) in zip(processes, outputs, strict=True)]


async def _until_all_wait(
    observer: asyncpg.Connection, processes: list[asyncio.subprocess.Process]
) -> None:
    """Until every process waits on a lock in the database, or one of them has exited."""
    while await _waiting_on_locks(observer) < len(processes):
        if any(p.returncode is not None for p in processes):
            return
        await asyncio.sleep(0.05)


def _exit_code(process: asyncio.subprocess.Process) -> int:
    return -1 if process.returncode is None else process.returncode


async def _waiting_on_locks(connection: asyncpg.Connection) -> int:
    count: int = await connection.fetchval(
        """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock'
        """
    )
    return count


@pytest.mark.parametrize("command", list(COMMANDS.values()), ids=list(COMMANDS))
def test_upgrade_accepts_a_sqlalchemy_style_asyncpg_url(
    empty_database: DatabaseUrl, tmp_path: Path, command: list[str]
) -> None:
    url = "postgresql+asyncpg" + empty_database.dsn.removeprefix("postgresql")
    assert_succeeded(run(command, url, tmp_path))
    assert schema(empty_database) == EXPECTED


def test_upgrade_accepts_a_url_with_libpq_parameters(
    empty_database: DatabaseUrl, tmp_path: Path
) -> None:
    """`?sslmode=...`, as hosted PostgreSQL services hand out, works for the server: so here."""
    parts = urlsplit(empty_database.dsn)
    query = "&".join(filter(None, [parts.query, "sslmode=disable"]))
    url = urlunsplit(parts._replace(query=query))
    asyncio.run(_execute(DatabaseUrl.parse(url), "SELECT 1"))  # the event store's driver takes it
    assert_succeeded(run(PRODUCTFLO, url, tmp_path))
    assert schema(empty_database) == EXPECTED


def test_upgrade_of_an_unreachable_database_fails_with_a_nonzero_exit(tmp_path: Path) -> None:
    result = run(PRODUCTFLO, "postgresql://nobody@127.0.0.1:1/nothing", tmp_path)
    assert result.returncode != 0


def test_offline_upgrade_writes_the_sql_for_a_url_of_several_hosts(tmp_path: Path) -> None:
    """`alembic upgrade head --sql` connects to nothing: a failover URL naming several hosts
    (none of them up) gives the SQL an operator reviews before running it."""
    url = "postgresql://ops@127.0.0.1:1,127.0.0.1:2/productflo?target_session_attrs=read-write"
    result = run([*ALEMBIC, "--sql"], url, tmp_path)
    assert_succeeded(result)
    assert "CREATE TABLE events" in result.stdout
    assert "CREATE INDEX events_doc_updates" in result.stdout  # through the last migration
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in result.stdout
