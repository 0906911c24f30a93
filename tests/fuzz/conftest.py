"""The fuzz suites' counts, printed in the terminal summary (also without `-s`)."""

from __future__ import annotations

from typing import Any

from tests.fuzz.tally import TALLIES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLIES:
        return
    terminalreporter.write_sep("=", "fuzz counts")
    for name, counts in TALLIES.items():
        for line in counts.lines(name):
            terminalreporter.write_line(line)
