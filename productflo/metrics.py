"""Prometheus metrics (GET /metrics): what an operator asks of a running server, one series each.

docs/operations.md ("Metrics") lists the series and the question each answers;
docs/grafana-dashboard.json draws them.

One view of every worker. `productflo serve --workers N` runs N processes behind one port, and
whichever answers GET /metrics must report all of them: the parent gives its workers a fresh
directory (`shared_directory`, PROMETHEUS_MULTIPROC_DIR) before they start, and in them
prometheus_client keeps every value in a file of that process's own, which a scrape adds up
(`exposition`). The variable has to be set before prometheus_client is imported, which holds for
workers (uvicorn spawns them as fresh interpreters) and for nothing else: a single process
(`--workers 1`, the tests' servers) keeps its values in memory. Counters and histograms of a
worker that died stay in the sum, so they never go back; the gauges of the living are summed
(`livesum`) or the worst of them taken (`livemax`), and a scrape forgets the gauges of workers
that are gone (`_forget_the_dead`), since uvicorn has no hook that would tell.

Hot paths count in bulk: a batch of deliveries or replayed events is one `inc(n)`, and the
children of labelled series are bound once, here or per connection, not looked up per frame.

Lag is positions behind the newest position this process knows committed (`Recent.head`: its
own commits, what it read, and every commit's NOTIFY), for the hub and for each consumer. It is
worked out from what they already hold, with no query: at each scrape by the process answering
it, and with --workers every second by every worker (`publish_lags`, which the hub runs), so
that another worker's lag is at most a second old.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from productflo.errors import CloseCode, ErrorCode

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
# Chosen by prometheus_client when it was imported: files in the shared directory, or memory.
MULTIPROCESS = values.ValueClass is not values.MutexValue
PUBLISH_SECONDS = 1.0

# Transport.name as the label says it: the native endpoint's name is "websocket" in the log.
TRANSPORTS = {"websocket": "native", "socketio": "socketio"}
UNKNOWN = "unknown"  # an inbound code the protocol does not know, or a frame with none readable

CONNECTIONS = Gauge(
    "productflo_connections",
    "Open client connections, by transport and endpoint",
    ["transport", "endpoint"],
    multiprocess_mode="livesum",
)
MESSAGES_RECEIVED = Counter(
    "productflo_messages_received_total", "Inbound frames received, by transport", ["transport"]
)
INBOUND = Counter(
    "productflo_inbound_messages_total",
    "Inbound messages taken, by code (codes the protocol does not know: unknown)",
    ["code"],
)
MESSAGES_REJECTED = Counter(
    "productflo_messages_rejected_total", "Inbound messages refused, by error code", ["error_code"]
)
DELIVERIES = Counter(
    "productflo_deliveries_total", "Live envelopes handed to connections to send (fan-out)"
)
REPLAYS = Counter("productflo_replays_total", "Connections that resumed with last_event_id")
REPLAYED_EVENTS = Counter("productflo_replayed_events_total", "Events sent in replays")
CLOSES = Counter(
    "productflo_closes_total", "Connections the server closed (or refused), by close code", ["code"]
)
SLOW_CLIENTS_DROPPED = Counter(
    "productflo_slow_clients_closed_total", "Connections closed 1013 for not keeping up"
)
TAIL_LAG = Gauge(
    "productflo_tail_lag_events",
    "Committed events the hub has not handed to its connections yet (worst process)",
    multiprocess_mode="livemax",
)
PROJECTION_LAG = Gauge(
    "productflo_projection_lag_events",
    "Committed events a projection or handler has not applied yet (worst process)",
    ["projection"],
    multiprocess_mode="livemax",
)
EVENTS_APPENDED = Counter("productflo_events_appended_total", "Events committed to the log")
APPEND_BATCH_SIZE = Histogram(
    "productflo_append_batch_events",
    "Events per group-commit transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
APPEND_SECONDS = Histogram(
    "productflo_append_transaction_seconds",
    "Duration of one group-commit transaction",
    # A durable commit takes about a quarter of a millisecond, one of 2,000 events tens of ms.
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AI_IN_FLIGHT = Gauge(
    "productflo_ai_requests_in_flight",
    "AI requests taken and not answered yet",
    multiprocess_mode="livesum",
)
AI_ANSWERS = Counter(
    "productflo_ai_answers_total", "AI requests answered, by code and outcome", ["code", "outcome"]
)
AI_SECONDS = Histogram(
    "productflo_ai_answer_seconds",
    "From taking an AI request up to storing its answer",
    ["code"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)

# Bound once: every value a label can take is known, so every series is there from the start
# (a dashboard's panel shows 0, not "no data"). The protocol's own codes are given by the app
# (`bind_codes`): envelopes imports the log, which counts here, so this module cannot import it.
_inbound: dict[str, Counter] = {}
_INBOUND_UNKNOWN = INBOUND.labels(UNKNOWN)
_CLOSES = {int(code): CLOSES.labels(str(int(code))) for code in CloseCode}
for _error in ErrorCode:
    MESSAGES_REJECTED.labels(_error.value)
for _transport, _endpoint in (("native", "/ws"), ("native", "/ws/secure"), ("socketio", "/ws")):
    CONNECTIONS.labels(_transport, _endpoint)
for _transport in TRANSPORTS.values():
    MESSAGES_RECEIVED.labels(_transport)


def bind_codes(inbound: Iterable[str], ai: Iterable[str]) -> None:
    """Give each of the protocol's inbound codes its series, and each AI request code its
    answers and answer time: the label values that count_inbound and the assistant use."""
    for code in inbound:
        _inbound.setdefault(str(code), INBOUND.labels(str(code)))
    for code in ai:
        AI_SECONDS.labels(str(code))
        for outcome in ("success", "error"):
            AI_ANSWERS.labels(str(code), outcome)


def transport_label(name: str) -> str:
    return TRANSPORTS.get(name, name)


def connections(transport_name: str, authenticated: bool) -> Gauge:
    """The gauge of one connection's kind: Socket.IO's endpoint is /ws, whatever its auth."""
    transport = transport_label(transport_name)
    endpoint = "/ws/secure" if authenticated and transport == "native" else "/ws"
    return CONNECTIONS.labels(transport, endpoint)


def count_inbound(code: str | None) -> None:
    """One message taken: its code, or None when none could be read from it. A code the
    protocol does not know (`bind_codes`) counts as unknown: the label's values stay bounded."""
    _inbound.get(code or "", _INBOUND_UNKNOWN).inc()


def count_close(code: int) -> None:
    child = _CLOSES.get(code)
    (child if child is not None else CLOSES.labels(str(code))).inc()


# -- lag ------------------------------------------------------------------------------------------

Lag = Callable[[], int | None]  # positions behind; None when the process does not run it
_lags: dict[int, tuple[Gauge, Lag]] = {}
_watched: dict[int, Gauge] = {}  # every gauge ever watched, so that one left unwatched reads 0
_keys = itertools.count()


def watch_lag(gauge: Gauge, lag: Lag) -> Callable[[], None]:
    """Report `lag()` in `gauge` (the worst, where several watch one gauge: several servers in
    one process); returns the function that stops it."""
    key = next(_keys)
    _lags[key] = (gauge, lag)
    _watched[id(gauge)] = gauge

    def unwatch() -> None:
        _lags.pop(key, None)

    return unwatch


def refresh_lags() -> None:
    worst = dict.fromkeys(_watched, 0)
    for gauge, lag in list(_lags.values()):
        value = lag()
        if value is not None and value > worst[id(gauge)]:
            worst[id(gauge)] = value
    for key, value in worst.items():
        _watched[key].set(value)


async def publish_lags() -> None:
    """Keep this process's lag gauges current, for scrapes that another worker answers; a
    process of its own works them out at each scrape, and has nothing to do here."""
    while MULTIPROCESS:
        refresh_lags()
        await asyncio.sleep(PUBLISH_SECONDS)


# -- exposition -----------------------------------------------------------------------------------

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


def exposition() -> bytes:
    """The text GET /metrics answers: this process's series, or every worker's."""
    refresh_lags()
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    directory = os.environ[MULTIPROCESS_DIRECTORY]
    _forget_the_dead(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _forget_the_dead(directory: str) -> None:
    """Drop the live gauges (connections, lag, AI in flight) of workers that are gone: a
    killed worker's connections are closed, whatever its file says."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        found = _LIVE_GAUGE_FILE.search(path)
        if found is not None:
            pids.add(int(found.group(1)))
    for pid in pids:
        if not _alive(pid):
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge, keep its values
    return True


@contextlib.contextmanager
def shared_directory() -> Iterator[str]:
    """A fresh, empty directory for the workers about to be started (their environment names
    it), removed with everything in it when the server exits."""
    with tempfile.TemporaryDirectory(prefix="productflo-metrics-") as directory:
        os.environ[MULTIPROCESS_DIRECTORY] = directory
        try:
            yield directory
        finally:
            os.environ.pop(MULTIPROCESS_DIRECTORY, None)
