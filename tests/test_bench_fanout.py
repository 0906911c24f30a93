"""The fan-out benchmark's own check, end to end: `python -m bench.fanout --quick` against
productflo (through `ws` and through socket.io-client) and Node Socket.IO loses, doubles and
refuses nothing. Its speed is not looked at."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fanout.measure import load_problems
from productflo.database import DatabaseUrl

ROOT = Path(__file__).resolve().parent.parent
FANOUT = ROOT / "bench" / "fanout"
QUICK_TIMEOUT = 120.0  # about 20 s here: a hang, not slowness, should fail it
PACKAGES = ("socket.io", "socket.io-client", "ws")
SERVERS = ("productflo", "productflo-socketio", "node")


def quick_summary(postgres_root: DatabaseUrl, directory: Path) -> dict[str, object]:
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    if not all((FANOUT / "node_modules" / name).is_dir() for name in PACKAGES):
        pytest.skip(f"{FANOUT / 'node_modules'} is missing: `make bench`, or `npm ci` in it")
    output = directory / "fanout.json"
    command = [sys.executable, "-m", "bench.fanout", "--quick", "--servers", ",".join(SERVERS)]
    command += ["--output", str(output), "--plot", str(directory / "fanout.png")]
    env = {**os.environ, "PRODUCTFLO_DATABASE_URL": postgres_root.dsn}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=QUICK_TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary: dict[str, object] = json.loads(output.read_text())
    return summary


@pytest.mark.slow
def test_quick_run_delivers_every_message_of_every_room_once(
    postgres_root: DatabaseUrl, tmp_path: Path
) -> None:
    summary = quick_summary(postgres_root, tmp_path)
    assert summary["lossless"] is True
    flat, offered = summary["flat_out"], summary["offered"]
    assert isinstance(flat, dict) and isinstance(offered, dict)
    for mode in (flat, offered["servers"]):
        assert set(mode) == set(SERVERS)
        for section in mode.values():
            for run in section["runs"]:
                assert run["ok"], run["problems"]
                assert run["deliveries"] == run["expected_deliveries"] == 20 * 5 * 20
    memory = summary["idle_memory"]
    assert isinstance(memory, dict) and set(memory) == set(SERVERS)
    for found in memory.values():
        assert found["problems"] == [] and found["connections"] == 100


def test_any_loss_fails_the_run() -> None:
    """What load.js reports lost, doubled, refused or dropped fails the run: never a slower one."""
    clean = {"clients": 5, "sent": 100, "lost": 0, "duplicates": 0, "unexpected": 0, "errors": 0}
    assert load_problems({**clean, "disconnects": 0, "stalled": False}, 20) == []
    for fault in ({"lost": 1}, {"duplicates": 1}, {"errors": 1}, {"disconnects": 1}):
        assert load_problems({**clean, **fault}, 20) != []
    assert load_problems({**clean, "stalled": True}, 20) == ["deliveries stalled"]
    assert load_problems({**clean, "sent": 99}, 20) == ["sent 99 of 100"]
