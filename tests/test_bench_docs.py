"""The documents benchmark's own check, end to end: a small `python -m bench.docs_throughput`
opens both documents whole (the sync checked against the history) and has every update of every
editor reach every other, productflo and the relay alike. Its speed is not looked at."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.docs_throughput import SNAPSHOTTED, UNSNAPSHOTTED, EditorsRun
from productflo.database import DatabaseUrl

ROOT = Path(__file__).resolve().parent.parent
WS = ROOT / "bench" / "fanout" / "node_modules" / "ws"
SMALL_TIMEOUT = 180.0  # about 30 s here: a hang, not slowness, should fail it
UPDATES = 2000


@pytest.mark.slow
def test_small_run_opens_whole_documents_and_delivers_every_update(
    postgres_root: DatabaseUrl, tmp_path: Path
) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    if not WS.is_dir():
        pytest.skip(f"{WS} is missing: `make bench`, or `npm ci` in bench/fanout")
    output = tmp_path / "docs.json"
    command = [sys.executable, "-m", "bench.docs_throughput", "--updates", str(UPDATES)]
    command += ["--opens", "1", "--editors", "4", "--runs", "1", "--duration", "1"]
    command += ["--warmup", "0.5", "--output", str(output)]
    env = {**os.environ, "PRODUCTFLO_DATABASE_URL": postgres_root.dsn}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SMALL_TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads(output.read_text())
    opened = summary["open"]
    assert opened["updates"] == UPDATES
    assert opened["snapshotted_row"]["snapshot_updates"] > 0
    assert summary["preparation"]["forgotten_row"]["updates"] == UPDATES
    for doc_id in (SNAPSHOTTED, UNSNAPSHOTTED):
        assert len(opened[doc_id]["open_ms_runs"]) == 1
    editors = summary["editors"]
    for server in ("productflo", "relay"):
        assert editors[server]["failures"] == []
        (run,) = editors[server]["runs"]
        assert run["acked_per_s"] > 0 and run["delivered_per_s"] > 0


def test_a_lost_or_diverged_update_fails_the_run() -> None:
    clean = {"drained": True, "undelivered": 0, "converged": True, "error_count": 0, "errors": []}
    run = EditorsRun("relay", 1, clean, {"wall": 1.0}, 0.0, 1.0, None)
    assert run.failures == []
    for fault in ({"drained": False, "undelivered": 3}, {"converged": False}, {"error_count": 1}):
        faulty = EditorsRun("relay", 1, {**clean, **fault}, {"wall": 1.0}, 0.0, 1.0, None)
        assert faulty.failures != []
