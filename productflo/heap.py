"""The garbage collector tuned for a long-running server. No I/O.

Under load the collector took a fifth of the server's CPU (bench/README.md): its full collections
walked every object the process had, and most of those are made at start-up (modules, the app,
the pools, the settings) and live until the process ends. `settle()` runs once start-up is done:
it moves them out of the collector's sight (`gc.freeze`) and makes the young generation larger, so
that the short-lived objects of each message (an envelope, a row, its JSON) are mostly freed by
reference counting before a collection ever looks at them.
"""

from __future__ import annotations

import gc

# Allocations (net of frees) of container objects between young collections (CPython's default
# 700), then young collections per middle one, middle ones per full one.
THRESHOLDS = (50_000, 20, 100)


def settle() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
