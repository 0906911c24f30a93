"""The `productflo` command as operators run it: real processes, embedded or given database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from productflo.database import DatabaseUrl
from tests.client import Client
from tests.conftest import free_port

PRODUCTFLO = str(Path(sys.executable).with_name("productflo"))


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no PRODUCTFLO_* configuration but what is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODUCTFLO_")}
    env.update(extra)
    return env


class ServerProcess:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [PRODUCTFLO, "serve", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server never became ready")

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down gracefully (uvicorn re-raises the signal)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return self.process.returncode in (0, -signal.SIGTERM) and "Finished server process" in out

    def output(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        out, _ = self.process.communicate(timeout=10)
        return out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[ServerProcess] = []

    def start(env: dict[str, str], *args: str) -> ServerProcess:
        process = ServerProcess(env, *args)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
        process.process.communicate(timeout=30)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PRODUCTFLO, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def chat_round_trip(port: int, token: str, room: str, text: str) -> dict[str, object]:
    client = await Client.open(f"ws://127.0.0.1:{port}/ws/secure?access_token={token}")
    try:
        await client.chat(room, text)
        return await client.recv_code("chat_response")
    finally:
        await client.close()


@pytest.fixture
def own_tmp() -> Iterator[Path]:
    """A directory outside pytest's temporary root: another pytest run on the machine resets
    that root to mode 0700, which locks out the embedded server's system user."""
    with tempfile.TemporaryDirectory(prefix="productflo-cli-") as directory:
        yield Path(directory)


def test_serve_with_no_configuration_runs_an_embedded_database(serve, own_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """A fresh machine: no database server, nothing configured, and the commands share it."""
    tmp_path = own_tmp
    env = clean_environment(PRODUCTFLO_DATA_DIR=str(tmp_path / "data"))
    server = serve(env)
    assert (tmp_path / "data" / "pgdata" / "PG_VERSION").exists()

    # Other commands work while the server runs, on the same data directory.
    upgraded = run(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    minted = run(env, "token", "mint", "ops-user", "--ttl", "600")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    secret = (tmp_path / "data" / "jwt_secret").read_text().strip()
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "ops-user"

    ack = asyncio.run(chat_round_trip(server.port, token, "ops", "kept?"))
    assert ack["user_id"] == "ops-user"
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # db upgrade left it running
    assert server.stop()

    # The data survives a restart: the same log, the message still in it.
    again = serve(env)
    history = asyncio.run(_history(again.port, token, "ops"))
    assert [e["data"]["message"] for e in history if e["code"] == "chat_response"] == ["kept?"]
    assert again.stop()


async def _history(port: int, token: str, room: str) -> list[dict[str, object]]:
    client = await Client.open(f"ws://127.0.0.1:{port}/ws/secure?access_token={token}")
    try:
        await client.send({"code": "history", "room_id": room, "data": {}})
        page = await client.recv_code("history")
        events: list[dict[str, object]] = page["data"]["events"]
        return events
    finally:
        await client.close()


def test_serve_uses_the_given_database_url(  # type: ignore[no-untyped-def]
    serve, database_url: DatabaseUrl, tmp_path: Path
) -> None:
    url = "postgresql+asyncpg" + database_url.dsn.removeprefix("postgresql")
    env = clean_environment(
        PRODUCTFLO_DATA_DIR=str(tmp_path / "data"),
        PRODUCTFLO_DATABASE_URL=url,
        PRODUCTFLO_JWT_SECRET="a-configured-secret-of-enough-length",
    )
    server = serve(env)
    assert not (tmp_path / "data" / "pgdata").exists()
    token = run(env, "token", "mint", "u1", "--admin", "--rooms", "a,b*").stdout.strip()
    claims = jwt.decode(token, "a-configured-secret-of-enough-length", algorithms=["HS256"])
    assert claims["role"] == "admin" and claims["rooms"] == ["a", "b*"]
    ack = asyncio.run(chat_round_trip(server.port, token, "a", "via url"))
    assert ack["room_id"] == "a"
    assert server.stop()


def test_python_dash_m_productflo_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "productflo", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for command in ("serve", "db", "token"):
        assert command in result.stdout


def test_token_mint_prints_only_the_token(tmp_path: Path) -> None:
    env = clean_environment(PRODUCTFLO_DATA_DIR=str(tmp_path / "data"))
    minted = run(env, "token", "mint", "someone", "--ttl", "5")
    claims = jwt.decode(
        minted.stdout.strip(),
        (tmp_path / "data" / "jwt_secret").read_text().strip(),
        algorithms=["HS256"],
    )
    assert claims["exp"] - claims["iat"] == 5
    assert json.dumps(claims)  # a plain JSON object
    assert (tmp_path / "data" / "jwt_secret").stat().st_mode & 0o077 == 0
