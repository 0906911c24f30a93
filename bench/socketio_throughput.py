"""Socket.IO throughput: what the Socket.IO adapter costs beside the native WebSocket endpoint.

    .venv/bin/python -m bench.socketio_throughput [--clients 20] [--in-flight 10] [--runs 5] ...

One `productflo serve` subprocess serves every run. Each run has N fresh clients, one room per
client (so every event goes only to its sender), each keeping up to K chat messages
unacknowledged through the warm-up and the measured window. Three variants:

- native: `websockets` clients on /ws, driven by append_throughput's `pump`; a message counts when
  its `chat_response` (the sender's own copy: the acknowledgement) arrives inside the window.
- socketio: python-socketio AsyncClients (websocket transport only, path /ws, header User-ID)
  emitting `message` with a callback; a message counts when the callback receives the envelope
  that acknowledges it inside the window. The server also emits that chat_response to the sender
  as a `message` event, so each message comes back twice (the client ignores the event).
- socketio-noack: the same clients emitting without a callback; a message counts when the
  `message` event carrying its chat_response arrives inside the window: native's rule, over
  Socket.IO.

Each round runs the three closed-loop (every client sends as fast as its acknowledgements allow),
then the three paced (--paced-rate messages/s in all, spread evenly over the clients, so every
variant carries the same load: group commit then batches alike, and the CPU per message compares
like for like). Within each, the variants run one after the other, their order rotating from
round to round, so drift on a shared machine hits them alike.

Reported per run: acknowledged messages/s (median of the rounds, and every round), ack latency
percentiles (pooled over the rounds), the CPU cores the server, this process (all the clients),
PostgreSQL and the rest of the machine used during the measured window, and from those the CPU
time per acknowledged message. This process near one core means the Python clients, not the
server, set the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import socketio
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

import productflo
from bench._harness import (
    ServerProcess,
    add_run_options,
    database_facts,
    fresh_database,
    memory_kib,
    postgres_root,
    running_server,
)
from bench.append_throughput import (
    DRAIN_TIMEOUT,
    MESSAGE,
    RATE_LIMIT,
    Meters,
    Tally,
    Window,
    chat_frame,
    environment_facts,
    open_client,
    percentiles_ms,
    postmaster,
    pump,
    scrape,
    write_results,
)
from productflo.database import DatabaseUrl

RESULTS = Path(__file__).resolve().parent / "results" / "socketio_throughput.json"
VARIANTS = ("native", "socketio", "socketio-noack")
SETUP_TIMEOUT = 15.0
# This process runs every client on one event loop, so it cannot use much more than one core:
# at this much, the clients, not the server, are what limits the rate.
SATURATED_CORES = 0.9
# The machine's cores this busy (as a share of them all) leave the server nothing to spare.
MACHINE_SATURATED = 0.9
LOG_SAMPLES = 10
# Between runs, the server counts as idle once it uses less than IDLE_CORES over IDLE_STEP s.
IDLE_CORES = 0.05
IDLE_STEP = 0.25
IDLE_TIMEOUT = 30.0
# The paced runs' total rate: below what every variant reaches here in closed loop, so that all
# variants carry the same load and their CPU per message compares like for like.
PACED_RATE = 1000.0

Envelope = dict[str, Any]


@dataclass(frozen=True)
class Options:
    clients: int
    in_flight: int
    runs: int
    duration: float
    warmup: float
    output: Path | None
    variants: tuple[str, ...] = VARIANTS
    paced_rate: float = 0.0  # messages/s offered in all in the paced runs; 0: no paced runs

    def modes(self) -> list[tuple[str, float | None]]:
        """closed_loop: as fast as acknowledgements allow; paced: at paced_rate in all."""
        closed: list[tuple[str, float | None]] = [("closed_loop", None)]
        return closed + ([("paced", self.paced_rate)] if self.paced_rate else [])


@dataclass
class SioTally(Tally):
    """A Socket.IO client's count: what Tally counts, and what went wrong instead of raising."""

    errors: int = 0  # answers (or events) with a status other than success
    missing: int = 0  # sent, and not acknowledged within DRAIN_TIMEOUT after sending stopped
    disconnects: int = 0  # the connection dropped while the client was sending
    echoes: int = 0  # chat_response events the callback variant received (and ignored)


@dataclass(frozen=True)
class Run:
    variant: str
    rate: float
    acked: int
    latencies: list[float]
    cpu: dict[str, float]  # cores used during the measured window, by component
    events_per_commit: float
    errors: int = 0
    missing: int = 0
    disconnects: int = 0
    echoes: int = 0
    server_cpu_at_end: float = 0.0  # the server's CPU seconds (since it started) at window end
    server_cpu_after: float = 0.0  # its CPU seconds from the window's end until it was idle
    idle_after: float = 0.0  # seconds from the run's end until the server was idle

    def us_per_message(self) -> dict[str, float]:
        """CPU microseconds per acknowledged message, by component of ours; `server_all` adds
        the server's work after the window (draining, closing, log followers catching up)."""
        if not self.rate or not self.acked:
            return {}
        per = {
            name: 1e6 * cores / self.rate
            for name, cores in self.cpu.items()
            if name in ("server", "load", "postgres")
        }
        if "server" in per:
            per["server_all"] = per["server"] + 1e6 * self.server_cpu_after / self.acked
        return per


# -- Socket.IO clients ---------------------------------------------------------------------------


class SioClient:
    """A python-socketio AsyncClient in one room. Its `message` events (payload.data, the
    envelope) go to `listener` when one is set, else to the `setup` queue."""

    def __init__(self, user: str, room: str) -> None:
        self.user = user
        self.room = room
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.setup: asyncio.Queue[Envelope] = asyncio.Queue()
        self.listener: Callable[[Envelope], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.lost = False
        self.closing = False
        self.disconnects = 0
        self.sio.on("message", self._on_message)
        self.sio.on("disconnect", self._on_disconnect)

    def _on_message(self, payload: dict[str, Any]) -> None:
        envelope: Envelope = payload["data"]
        if self.listener is not None:
            self.listener(envelope)
        else:
            self.setup.put_nowait(envelope)

    def _on_disconnect(self, reason: Any = None) -> None:
        if self.closing:
            return
        self.lost = True
        self.disconnects += 1
        if self.on_lost is not None:
            self.on_lost()

    async def close(self) -> None:
        self.closing = True
        await self.sio.disconnect()


async def open_sio_client(server: ServerProcess, user: str, room: str) -> SioClient:
    """Connected over the websocket transport, welcomed, and a member of its room."""
    client = SioClient(user, room)
    await client.sio.connect(
        server.http,
        headers={"User-ID": user},
        transports=["websocket"],
        socketio_path="/ws",
        wait_timeout=SETUP_TIMEOUT,
    )
    async with asyncio.timeout(SETUP_TIMEOUT):
        welcome = await client.setup.get()
        assert welcome["code"] == "system", welcome
        await client.sio.emit("message", {"code": "join", "room_id": room})
        while True:
            message = await client.setup.get()
            if message.get("status") == "error":
                raise RuntimeError(f"the server refused a message: {message}")
            if message["code"] == "system" and message.get("room_id") == room:
                return client


def chat_envelope(room: str, seq: int) -> Envelope:
    """append_throughput's `chat_frame`, as the object a Socket.IO client emits."""
    return {"code": "chat", "room_id": room, "data": {"message": f"{seq} {MESSAGE}"}}


class Load:
    """One client's sending: up to `in_flight` unacknowledged, optionally paced (a message every
    `interval` seconds at most, from `first`), until the window ends; then a drain. `settle`
    acknowledges a message by its sequence number; `lose` stops it all (disconnected)."""

    def __init__(
        self, in_flight: int, window: Window, interval: float | None = None, first: float = 0.0
    ) -> None:
        self.tally = SioTally()
        self.window = window
        self.interval = interval
        self.first = first
        self.in_flight = in_flight
        self.sent: dict[int, float] = {}  # seq -> send time
        self.slots = asyncio.Semaphore(in_flight)
        self.drained = asyncio.Event()
        self.sending = True
        self.lost = False

    def settle(self, seq: int, envelope: Envelope | None = None) -> None:
        began = self.sent.pop(seq, None)
        if began is None:
            return
        now = time.perf_counter()
        if envelope is None or envelope.get("status") != "success":
            self.tally.errors += 1
        elif self.window.counts(now):
            self.tally.acked += 1
            self.tally.latencies.append(now - began)
        self.slots.release()
        if not self.sending and not self.sent:
            self.drained.set()

    def settle_echo(self, envelope: Envelope) -> None:
        """Acknowledged by the chat_response itself: its text starts with the sequence number."""
        self.settle(int(envelope["data"]["message"].split(" ", 1)[0]), envelope)

    def lose(self) -> None:
        self.lost = True
        for _ in range(self.in_flight):  # wake the sender, which sees `lost` and stops
            self.slots.release()
        self.drained.set()

    async def run(self, send: Callable[[int], Awaitable[None]]) -> SioTally:
        seq = 0
        due = self.first
        while not self.lost:
            if self.interval is not None:
                due += self.interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await self.slots.acquire()
            if self.lost or time.perf_counter() >= self.window.end:
                break
            seq += 1
            self.sent[seq] = time.perf_counter()
            try:
                await send(seq)
            except (socketio.exceptions.SocketIOError, ConnectionClosed):
                self.lose()  # counted as a disconnect by the caller
        self.sending = False
        if self.sent and not self.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), DRAIN_TIMEOUT)
        self.tally.missing = len(self.sent)
        return self.tally


def pacing(
    rate: float | None, clients: int, window: Window, index: int
) -> tuple[float | None, float]:
    """A client's interval between sends, and its first send (staggered), at `rate` in all."""
    if rate is None:
        return None, window.begin
    interval = clients / rate
    return interval, window.begin + interval * index / clients


async def sio_pump(client: SioClient, load: Load, *, callback: bool) -> SioTally:
    """With `callback`, a message is acknowledged by its emit callback; without, by the `message`
    event carrying its chat_response (matched by the sequence number the text starts with)."""

    def on_event(envelope: Envelope) -> None:
        if envelope.get("status") == "error":
            load.tally.errors += 1
        elif envelope.get("code") == "chat_response" and envelope.get("user_id") == client.user:
            if callback:
                load.tally.echoes += 1
            else:
                load.settle_echo(envelope)

    async def send(seq: int) -> None:
        acked = functools.partial(load.settle, seq) if callback else None
        await client.sio.emit("message", chat_envelope(client.room, seq), callback=acked)

    client.listener, client.on_lost = on_event, load.lose
    try:
        tally = await load.run(send)
    finally:
        client.listener, client.on_lost = (lambda envelope: None), None
    tally.disconnects = client.disconnects
    return tally


async def paced_native_pump(connection: ClientConnection, room: str, load: Load) -> SioTally:
    """append_throughput's `pump`, paced: the same frames and acknowledgements."""

    async def receive() -> None:
        while True:
            message = json.loads(await connection.recv())
            if message.get("status") == "error":
                load.tally.errors += 1
            elif message["code"] == "chat_response":
                load.settle_echo(message)

    async def send(seq: int) -> None:
        await connection.send(chat_frame(room, seq))

    receiver = asyncio.create_task(receive())

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled():  # the connection closed under the sender
            load.lose()

    receiver.add_done_callback(ended)
    try:
        tally = await load.run(send)
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await receiver
    if load.lost:
        tally.disconnects += 1
    return tally


# -- the runs ------------------------------------------------------------------------------------


def machine_busy() -> dict[str, float]:
    """CPU seconds the whole machine spent busy (every process), and lost to the hypervisor."""
    times = psutil.cpu_times()
    busy = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
    return {"machine": float(busy), "steal": float(getattr(times, "steal", 0.0))}


async def window_cpu(meters: Meters, window: Window) -> tuple[dict[str, float], float]:
    """CPU cores each component used between the window's start and end (`others`: the rest of
    the machine, other processes), and the server's CPU seconds at the end."""
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    before = {**meters.snapshot(), **machine_busy()}
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    after = {**meters.snapshot(), **machine_busy()}
    cores = Meters.cores(before, after)
    ours = sum(cores.get(name, 0.0) for name in ("server", "load", "postgres"))
    cores["others"] = round(max(0.0, cores["machine"] - ours), 2)
    return cores, after["server"]


async def until_idle(meters: Meters, run: Run) -> Run:
    """Wait for the server to go idle (its log followers may still be catching up), so that the
    next run starts clean; the CPU it spent since the window's end goes with this run."""
    began = last = time.perf_counter()
    busy = meters.snapshot()
    while time.perf_counter() - began < IDLE_TIMEOUT:
        await asyncio.sleep(IDLE_STEP)
        now = meters.snapshot()
        cores = (now["server"] - busy["server"]) / (now["wall"] - busy["wall"])
        busy = now
        if cores < IDLE_CORES:
            break
        last = time.perf_counter()
    return replace(
        run,
        server_cpu_after=round(busy["server"] - run.server_cpu_at_end, 3),
        idle_after=round(last - began, 2),
    )


Pumps = Callable[[Window], list[Awaitable[Tally]]]


async def measured(
    variant: str, server: ServerProcess, meters: Meters, options: Options, pumps: Pumps
) -> Run:
    """Start the clients' pumps on a fresh window; their tallies, the CPU, the commits."""
    before = await scrape(server)
    window = Window.after(options.warmup, options.duration)
    cpu = asyncio.create_task(window_cpu(meters, window))
    tallies = await asyncio.gather(*pumps(window))
    cores, server_cpu_at_end = await cpu
    after = await scrape(server)
    events, commits = after[0] - before[0], after[1] - before[1]
    total = SioTally()
    for tally in tallies:
        total.add(tally)
        if isinstance(tally, SioTally):
            total.errors += tally.errors
            total.missing += tally.missing
            total.disconnects += tally.disconnects
            total.echoes += tally.echoes
    return Run(
        variant,
        total.acked / options.duration,
        total.acked,
        total.latencies,
        cores,
        events / commits if commits else 0.0,
        total.errors,
        total.missing,
        total.disconnects,
        total.echoes,
        server_cpu_at_end,
    )


def client_names(variant: str, tag: str, clients: int) -> list[tuple[str, str]]:
    """Fresh users and rooms for each run."""
    prefix = f"bench-{variant}-{tag}"
    return [(f"{prefix}-u{i}", f"{prefix}-room{i}") for i in range(clients)]


async def native_run(
    server: ServerProcess, meters: Meters, options: Options, rate: float | None, tag: str
) -> Run:
    names = client_names("native", tag, options.clients)
    connections = await asyncio.gather(*(open_client(server, u, r) for u, r in names))
    rooms = [room for _, room in names]

    def pumps(window: Window) -> list[Awaitable[Tally]]:
        if rate is None:  # closed loop: append_throughput's own pump
            return [
                pump(c, room, options.in_flight, window)
                for c, room in zip(connections, rooms, strict=True)
            ]
        return [
            paced_native_pump(
                c, room, Load(options.in_flight, window, *pacing(rate, len(rooms), window, i))
            )
            for i, (c, room) in enumerate(zip(connections, rooms, strict=True))
        ]

    try:
        return await measured("native", server, meters, options, pumps)
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


async def sio_run(
    variant: str,
    server: ServerProcess,
    meters: Meters,
    options: Options,
    rate: float | None,
    tag: str,
) -> Run:
    names = client_names(variant, tag, options.clients)
    clients = await asyncio.gather(*(open_sio_client(server, u, r) for u, r in names))
    callback = variant == "socketio"

    def pumps(window: Window) -> list[Awaitable[Tally]]:
        return [
            sio_pump(
                c,
                Load(options.in_flight, window, *pacing(rate, len(clients), window, i)),
                callback=callback,
            )
            for i, c in enumerate(clients)
        ]

    try:
        return await measured(variant, server, meters, options, pumps)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


Rounds = dict[str, dict[str, list[Run]]]  # mode -> variant -> a run per round


async def measure(options: Options, server: ServerProcess, served: DatabaseUrl) -> Rounds:
    meters = Meters(psutil.Process(server.pid), psutil.Process(), await postmaster(served))
    modes = options.modes()
    rounds: Rounds = {mode: {variant: [] for variant in options.variants} for mode, _ in modes}
    for round_no in range(options.runs):
        shift = round_no % len(options.variants)
        for mode, rate in modes:
            for variant in options.variants[shift:] + options.variants[:shift]:
                tag = f"{mode}-r{round_no}"
                if variant == "native":
                    run = await native_run(server, meters, options, rate, tag)
                else:
                    run = await sio_run(variant, server, meters, options, rate, tag)
                rounds[mode][variant].append(await until_idle(meters, run))
            progress(round_no, mode, rounds[mode])
    return rounds


def progress(round_no: int, mode: str, runs: dict[str, list[Run]]) -> None:
    parts = []
    for variant, done in runs.items():
        run = done[-1]
        server = run.us_per_message().get("server", 0.0)
        parts.append(
            f"{variant} {run.rate:5.0f}/s srv {run.cpu.get('server', 0):.2f} cores"
            f" {server:4.0f} us/msg (+{run.server_cpu_after:.2f} s after),"
            f" cli {run.cpu.get('load', 0):.2f}"
        )
    print(f"round {round_no + 1} {mode}: " + "; ".join(parts), file=sys.stderr, flush=True)


# -- the report ----------------------------------------------------------------------------------


def medians(rows: list[dict[str, float]], digits: int) -> dict[str, float]:
    names = sorted({name for row in rows for name in row})
    return {
        name: round(statistics.median([row[name] for row in rows if name in row]), digits)
        for name in names
    }


def variant_summary(runs: list[Run]) -> dict[str, Any]:
    latencies = [value for run in runs for value in run.latencies]
    cpu = medians([run.cpu for run in runs], 2)
    return {
        "messages_per_s_median": round(statistics.median([run.rate for run in runs])),
        "messages_per_s_runs": [round(run.rate) for run in runs],
        "ack_latency_ms": percentiles_ms(latencies) if len(latencies) > 1 else None,
        "cpu_cores_median": cpu,
        "cpu_cores_runs": [run.cpu for run in runs],
        "cpu_us_per_message_median": medians([run.us_per_message() for run in runs], 1),
        "server_cpu_after_window_s_runs": [run.server_cpu_after for run in runs],
        "server_busy_after_run_s_runs": [run.idle_after for run in runs],
        "client_saturated": cpu.get("load", 0.0) >= SATURATED_CORES,
        "machine_saturated": cpu.get("machine", 0.0) >= MACHINE_SATURATED * (os.cpu_count() or 1),
        "events_per_commit_median": round(
            statistics.median([run.events_per_commit for run in runs]), 1
        ),
        "errors": sum(run.errors for run in runs),
        "missing_acks": sum(run.missing for run in runs),
        "disconnects": sum(run.disconnects for run in runs),
        "chat_response_events_ignored": sum(run.echoes for run in runs),
    }


def server_log_facts(path: Path) -> dict[str, Any]:
    """Warnings, errors and server-side closes in the server's output."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    noted = [
        line
        for line in lines
        if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
        or "closed by the server" in line
    ]
    return {
        "lines": len(lines),
        "warnings": sum(" WARNING " in line for line in lines),
        "errors": sum(" ERROR " in line or " CRITICAL " in line for line in lines),
        "tracebacks": sum("Traceback" in line for line in lines),
        "closed_by_the_server": sum("closed by the server" in line for line in lines),
        "samples": noted[:LOG_SAMPLES],
    }


def code_facts() -> dict[str, Any]:
    """Where the server's code came from: its commit, and whether it differed from it."""
    root = Path(productflo.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.rstrip()

    changed = git("status", "--porcelain", "--", "productflo")
    return {
        "productflo_from": str(root),
        "commit": git("rev-parse", "HEAD") or None,
        "productflo_uncommitted_changes": changed.splitlines() if changed else [],
    }


def mode_summary(runs: dict[str, list[Run]]) -> dict[str, Any]:
    variants = {variant: variant_summary(done) for variant, done in runs.items()}
    native = variants.get("native", {}).get("cpu_us_per_message_median", {}).get("server")
    for summary in variants.values():
        server = summary["cpu_us_per_message_median"].get("server")
        summary["server_cpu_per_message_vs_native"] = (
            round(server / native, 2) if server and native else None
        )
        summary["server_cpu_per_message_over_native_us"] = (
            round(server - native, 1) if server and native else None
        )
    return variants


def summarize(
    options: Options,
    rounds: Rounds,
    memory: dict[str, int],
    facts: dict[str, Any],
    log: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    return {
        "benchmark": "socketio_throughput",
        "command": " ".join(["python -m bench.socketio_throughput", *sys.argv[1:]]),
        "config": {
            "clients": options.clients,
            "in_flight_per_client": options.in_flight,
            "rooms": "one per client",
            "runs": options.runs,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "paced_rate": options.paced_rate or None,
            "rate_limit": int(RATE_LIMIT),
            "order": "each round: the closed-loop runs, then the paced runs; within each, the"
            " variants one after the other, their order rotating from round to round",
        },
        "environment": facts,
        "wall_seconds": round(seconds, 1),
        **{mode: mode_summary(runs) for mode, runs in rounds.items()},
        "server_peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
        "server_log": log,
    }


def table(summary: dict[str, Any], modes: list[str]) -> str:
    rows = [
        (
            "run",
            "msg/s",
            "rounds",
            "ack p50/p95/p99 ms",
            "cores srv/cli/pg/others",
            "µs/msg srv/srv+after/cli/pg",
            "ev/commit",
            "srv µs/msg vs native",
        )
    ]
    parts = ("server", "load", "postgres")
    for mode in modes:
        for variant, section in summary[mode].items():
            latency = section["ack_latency_ms"] or {"p50": 0, "p95": 0, "p99": 0}
            cores, per = section["cpu_cores_median"], section["cpu_us_per_message_median"]
            over = section["server_cpu_per_message_over_native_us"]
            versus = (
                f"{section['server_cpu_per_message_vs_native']}x ({over:+.0f})"
                if over is not None
                else "-"
            )
            rows.append(
                (
                    f"{mode} {variant}" + (" *" if section["client_saturated"] else ""),
                    f"{section['messages_per_s_median']:,}",
                    " ".join(str(rate) for rate in section["messages_per_s_runs"]),
                    f"{latency['p50']}/{latency['p95']}/{latency['p99']}",
                    "/".join(f"{cores.get(name, 0):.2f}" for name in (*parts, "others")),
                    "/".join(
                        f"{per.get(name, 0):.0f}"
                        for name in ("server", "server_all", "load", "postgres")
                    ),
                    f"{section['events_per_commit_median']}",
                    versus + ("  (machine busy)" if section["machine_saturated"] else ""),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.append(
        f"* the clients (this process) used at least {SATURATED_CORES} of a core: they limit"
        " the rate"
    )
    lines.append(
        "srv+after: with the server's CPU from the window's end until it was idle (draining,"
        " closing, log followers catching up)"
    )
    lines.append(
        f"machine busy: all processes together kept {MACHINE_SATURATED:.0%} of the machine's"
        " cores busy (others: what is not the server, the clients or PostgreSQL)"
    )
    return "\n".join(line.rstrip() for line in lines)


# -- main ----------------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.socketio_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=20, help="clients per variant (20)")
    parser.add_argument("--in-flight", type=int, default=10, help="unacknowledged per client (10)")
    add_run_options(parser, RESULTS)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} (all)",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=PACED_RATE,
        help="messages/s offered in all, paced evenly over the clients, in the paced runs that"
        f" follow each round's closed-loop runs; 0: none ({PACED_RATE:.0f})",
    )
    args = parser.parse_args(argv)
    variants = tuple(name.strip() for name in args.variants.split(",") if name.strip())
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    output = None if args.no_output else args.output
    return Options(
        args.clients,
        args.in_flight,
        args.runs,
        args.duration,
        args.warmup,
        output,
        variants,
        args.paced_rate,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    began = time.perf_counter()
    load = os.getloadavg()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="productflo-bench-") as scratch:
        workdir = Path(scratch)
        with (
            postgres_root(workdir) as (root, where),
            fresh_database(root, f"productflo_bench_{tag}_sio") as served,
        ):
            facts = {
                **environment_facts(where, asyncio.run(database_facts(served)), load),
                "python_socketio": importlib.metadata.version("python-socketio"),
                "python_engineio": importlib.metadata.version("python-engineio"),
                "websockets": importlib.metadata.version("websockets"),
                "aiohttp": importlib.metadata.version("aiohttp"),
                **code_facts(),
            }
            with running_server(served, workdir, {"PRODUCTFLO_RATE_LIMIT": RATE_LIMIT}) as server:
                rounds = asyncio.run(measure(options, server, served))
                memory = memory_kib(server.pid)
            log = server_log_facts(workdir / "server.log")
    summary = summarize(options, rounds, memory, facts, log, time.perf_counter() - began)
    print(table(summary, [mode for mode, _ in options.modes()]))
    if log["warnings"] or log["errors"] or log["closed_by_the_server"]:
        print(f"server log: {log}", file=sys.stderr)
    if options.output is not None:
        write_results(summary, options.output)
        print(f"results: {options.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
