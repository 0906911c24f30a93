"""Programs from the system that some tests drive (Debian's Chromium, nginx), never downloaded.

Where one is missing, its tests are skipped with the command that installs it as the reason, and
the terminal summary names each test that did not run, so that `make test` passes on a machine
without it and says what it left out. A directory's conftest.py holds one `Requirement` and
calls `skip_missing` and `summarize` from its own `pytest_collection_modifyitems` and
`pytest_terminal_summary` hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def missing_program(path: Path, install: str) -> str | None:
    """Why `path` cannot be run here, or None."""
    if path.is_file() and os.access(path, os.X_OK):
        return None
    return f"{path} is missing: install it with `{install}`"


@dataclass(frozen=True)
class Requirement:
    """What the tests under `directory` need, and why it is missing here (None: it is not)."""

    name: str  # what the summary calls these tests: "browser", "nginx"
    directory: Path
    missing: str | None

    @property
    def skip_reason(self) -> str:
        return f"{self.name} test not run: {self.missing}"

    def skip_missing(
        self, items: list[pytest.Item], needs: Callable[[pytest.Item], bool] = lambda _: True
    ) -> None:
        """Marks to skip each item under the directory that `needs` it, when it is missing."""
        if self.missing is None:
            return
        for item in items:
            if self.directory in Path(str(item.path)).resolve().parents and needs(item):
                item.add_marker(pytest.mark.skip(reason=self.skip_reason))

    def summarize(self, terminalreporter: Any) -> None:
        """The summary's section naming the tests that were skipped for want of it."""
        if self.missing is None:
            return
        skipped = [
            report.nodeid
            for report in terminalreporter.stats.get("skipped", [])
            if self.skip_reason in str(report.longrepr)
        ]
        terminalreporter.write_sep("=", f"{self.name} tests not run", yellow=True)
        if skipped:
            terminalreporter.write_line(
                f"{len(skipped)} {self.name} tests were skipped: {self.missing}"
            )
            for nodeid in skipped:
                terminalreporter.write_line(f"  {nodeid}")
        else:
            relative = self.directory.relative_to(Path(__file__).resolve().parents[1])
            terminalreporter.write_line(f"{relative}: no {self.name} test ran: {self.missing}")
