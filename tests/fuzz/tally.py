"""What the fuzz suites counted, printed at the end of the run (tests/fuzz/conftest.py).

`PRODUCTFLO_FUZZ_EXAMPLES` scales every suite: the number of Hypothesis examples each WebSocket
transport runs (a few frames each) and each HTTP operation gets. `make fuzz` sets it 20 times
higher than the default of `make test`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

DEFAULT_EXAMPLES = 400


def examples() -> int:
    return int(os.environ.get("PRODUCTFLO_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))


def census() -> bool:
    """`PRODUCTFLO_FUZZ_CENSUS=1`: count every failure to the end of the run instead of stopping
    at the first to shrink it (the test still fails if anything was counted)."""
    return os.environ.get("PRODUCTFLO_FUZZ_CENSUS", "") not in ("", "0")


@dataclass
class Tally:
    """One suite's counts. The three the issue asks for are crashes, leaks, acked_missing."""

    frames: int = 0  # fuzzed frames (or HTTP requests) sent
    answers: Counter[str] = field(default_factory=Counter)  # outcome -> frames
    crashes: int = 0  # unexpected closes and drops, errors the server logged, health failures
    silences: int = 0  # frames left without an answer
    wrong: int = 0  # answers SPEC does not allow for the frame (or more than one)
    leaks: int = 0  # answers showing internals
    acked: int = 0  # acknowledged events (event ids)
    acked_missing: int = 0  # acknowledged but not in GET /admin/events
    unaudited: int = 0  # refused frames without their `rejected` event in the log
    behind: int = 0  # acknowledged room events missing from GET /rooms/{room}/messages
    server_errors: int = 0  # HTTP 5xx
    failures: list[str] = field(default_factory=list)  # the first few, described

    def fail(self, kind: str, description: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        shown = f"[{kind}] {description}"
        if len(self.failures) < 30 and shown not in self.failures:
            self.failures.append(shown)

    def failed(self) -> int:
        return sum(
            (self.crashes, self.silences, self.wrong, self.leaks, self.acked_missing),
            self.unaudited + self.behind + self.server_errors,
        )

    def lines(self, name: str) -> list[str]:
        outcomes = ", ".join(f"{key} {count}" for key, count in sorted(self.answers.items()))
        return [
            f"{name}: {self.frames} frames, crashes {self.crashes}, leaks {self.leaks}, "
            f"acknowledged {self.acked}, acknowledged-but-missing {self.acked_missing}, "
            f"silent {self.silences}, wrong answers {self.wrong}, unaudited {self.unaudited}, "
            f"history behind {self.behind}, 5xx {self.server_errors}",
            f"  outcomes: {outcomes or '-'}",
            *(f"  {failure}" for failure in self.failures),
        ]


TALLIES: dict[str, Tally] = {}


def tally(name: str) -> Tally:
    return TALLIES.setdefault(name, Tally())
