"""The measurements: fan-out runs (flat out or at an offered rate), and idle memory per connection.

A run gives fresh users and rooms to the load processes, waits until every client has joined and
the server is quiet, then has every client send at one moment (`start_at`, wall-clock ms, which
every load process reads on the same clock). It ends when every client has received every message
of its room or deliveries stalled. CPU is read from /proc (psutil) over that window for the
server's process tree, PostgreSQL's (the postmaster and its backends), the load processes, this
process, the idle servers and the whole machine; then, until the server and PostgreSQL are quiet
again, what they still spend (productflo's log followers catching up) is added as `catch_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._harness import http_get
from bench.fanout.load import Layout, LoadFailed, LoadProcess, idle_configs, load_processes
from bench.fanout.servers import Target
from bench.socketio_throughput import machine_busy

SETUP_TIMEOUT = 120.0  # every client connected and joined
START_DELAY = 0.3  # seconds from telling the load processes to their start_at
RESULT_TIMEOUT = 900.0  # beyond the load processes' own stall detection: a hung process
QUIET_CORES = 0.05  # the server (and PostgreSQL) count as quiet below this, over QUIET_STEP s
QUIET_STEP = 0.25
QUIET_TIMEOUT = 60.0
BUSY_CORES = 0.2  # the rest of the machine using this much during a window: a busy window
QUIET_SAMPLE = 0.5
IDLE_WARM = 100  # connections opened before the baseline reading (first-use costs)
OPEN_TIMEOUT = 600.0
RSS_SETTLE = 0.005  # two readings this close (relative) 0.5 s apart: settled
RSS_SETTLE_TIMEOUT = 10.0

Histogram = dict[int, int]  # bucket k: latencies near 1.01**k ms


def tree_cpu(root: psutil.Process) -> float:
    """CPU seconds of a process, its exited (reaped) children and its live descendants."""
    times = root.cpu_times()
    total = float(times.user + times.system + times.children_user + times.children_system)
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            total += float(child_times.user + child_times.system)
    return total


def tree_rss(root: psutil.Process) -> int:
    total = int(root.memory_info().rss)
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += int(child.memory_info().rss)
    return total


def own_cpu(process: psutil.Process) -> float:
    """CPU seconds of a process alone (this one's children are the servers and load processes)."""
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class Meter:
    """CPU seconds of named groups of process trees (of single processes for the names in
    `alone`), and of the whole machine."""

    groups: dict[str, list[psutil.Process]]
    alone: frozenset[str] = frozenset({"bench"})

    def snapshot(self) -> dict[str, float]:
        now = {"wall": time.perf_counter(), **machine_busy()}
        for name, roots in self.groups.items():
            total = 0.0
            for root in roots:
                with contextlib.suppress(psutil.Error):
                    total += own_cpu(root) if name in self.alone else tree_cpu(root)
            now[name] = total
        return now

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds by group between two snapshots (`wall`: the seconds between them)."""
        return {name: round(after[name] - before[name], 4) for name in after if name in before}


@dataclass
class Run:
    server: str
    mode: str  # "flat_out" or "offered"
    rate: float | None  # messages/s offered in all (None: flat out)
    round_no: int
    clients: int
    room_size: int
    expected: int = 0  # deliveries a lossless run makes
    deliveries: int = 0
    seconds: float = 0.0  # from start_at to the last delivery
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the window, `wall` too
    catch_up: dict[str, float] = field(default_factory=dict)  # after the window, until quiet
    load_cores: list[float] = field(default_factory=list)  # each load process, in the window
    delivery: Histogram = field(default_factory=dict)
    ack: Histogram = field(default_factory=dict)
    lateness: Histogram = field(default_factory=dict)  # paced sends: how late, in ms
    problems: list[str] = field(default_factory=list)
    slow_clients_closed: int | None = None  # productflo's count of 1013 closes in the run
    attempt: int = 1
    waited_for_quiet: float = 0.0  # seconds the machine's other work held the start back

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0

    def us_per_delivery(self) -> dict[str, float]:
        if not self.deliveries:
            return {}
        per: dict[str, float] = {
            name: round(1e6 * self.cpu[name] / self.deliveries, 2)
            for name in ("server", "postgres", "load")
            if name in self.cpu
        }
        per["server_with_catch_up"] = round(
            1e6 * (self.cpu["server"] + self.catch_up.get("server", 0.0)) / self.deliveries, 2
        )
        if "postgres" in self.cpu:
            per["postgres_with_catch_up"] = round(
                1e6 * (self.cpu["postgres"] + self.catch_up.get("postgres", 0.0)) / self.deliveries,
                2,
            )
        return per

    @property
    def busy(self) -> bool:
        """Other work on the machine took at least BUSY_CORES during the window."""
        return self.cores().get("others", 0.0) >= BUSY_CORES

    def cores(self) -> dict[str, float]:
        wall = self.cpu.get("wall", 0.0)
        if not wall:
            return {}
        cores = {name: round(value / wall, 2) for name, value in self.cpu.items() if name != "wall"}
        ours = ("server", "postgres", "load", "bench", "idle_servers")
        cores["others"] = round(
            max(0.0, cores["machine"] - sum(cores.get(n, 0.0) for n in ours)), 2
        )
        return cores


def merge(into: Histogram, other: dict[str, int]) -> None:
    for key, count in other.items():
        into[int(key)] = into.get(int(key), 0) + count


def load_problems(result: dict[str, Any], messages: int) -> list[str]:
    """What a load process's result says went wrong: every kind of loss is a failed run."""
    problems = []
    for name in ("lost", "duplicates", "unexpected", "errors"):
        if result.get(name):
            problems.append(f"{result[name]} {name}")
    if result.get("disconnects"):
        codes = result.get("close_codes") or {}
        problems.append(f"{result['disconnects']} disconnects (close codes {codes})")
    if result.get("stalled"):
        problems.append("deliveries stalled")
    if result["sent"] != result["clients"] * messages:
        problems.append(f"sent {result['sent']} of {result['clients'] * messages}")
    return problems


class Bench:
    """The servers under test (all running), PostgreSQL, and the run options."""

    def __init__(
        self,
        targets: dict[str, Target],
        postgres: psutil.Process | None,
        workdir: Path,
        options: Any,
    ) -> None:
        self.targets = targets
        self.processes = {name: psutil.Process(t.pid) for name, t in targets.items()}
        self.postgres = postgres
        self.workdir = workdir
        self.options = options

    def servers(self, but: str | None = None) -> list[psutil.Process]:
        """The server processes, each once (one may serve several targets), but `but`'s."""
        skip = self.targets[but].pid if but else None
        unique = {process.pid: process for process in self.processes.values()}
        return [process for pid, process in unique.items() if pid != skip]

    def meter(self, name: str, loads: Iterable[LoadProcess] = ()) -> Meter:
        groups = {
            "server": [self.processes[name]],
            "idle_servers": self.servers(but=name),
            "load": [load.psutil for load in loads],
            "bench": [psutil.Process()],
        }
        if self.targets[name].program == "productflo" and self.postgres is not None:
            groups["postgres"] = [self.postgres]
        return Meter(groups)

    async def quiet(self, name: str) -> dict[str, float]:
        """Wait until the server (and its PostgreSQL) use less than QUIET_CORES; what they spent
        meanwhile, and how long it took (`wall`)."""
        meter = self.meter(name)
        meter.groups.pop("idle_servers")
        first = last = meter.snapshot()
        while last["wall"] - first["wall"] < QUIET_TIMEOUT:
            await asyncio.sleep(QUIET_STEP)
            now = meter.snapshot()
            busy = max(now[n] - last[n] for n in ("server", "postgres") if n in now)
            last = now
            if busy / QUIET_STEP < QUIET_CORES:
                break
        spent = Meter.spent(first, last)
        return {n: spent[n] for n in ("server", "postgres", "wall") if n in spent}

    async def machine_quiet(self, loads: list[LoadProcess]) -> float:
        """Wait (up to --wait-quiet s) until the machine's other work, what is none of our
        processes, uses less than BUSY_CORES over a QUIET_SAMPLE; the seconds waited."""
        if self.options.wait_quiet <= 0:
            return 0.0
        groups = {
            "servers": self.servers(),
            "postgres": [self.postgres] if self.postgres is not None else [],
            "load": [load.psutil for load in loads],
            "bench": [psutil.Process()],
        }
        meter = Meter(groups)
        began = time.perf_counter()
        while True:
            before = meter.snapshot()
            await asyncio.sleep(QUIET_SAMPLE)
            spent = Meter.spent(before, meter.snapshot())
            ours = sum(value for name, value in spent.items() if name in meter.groups)
            waited = time.perf_counter() - began
            if spent["machine"] - ours < BUSY_CORES * spent["wall"]:
                return round(waited - QUIET_SAMPLE, 2)
            if waited >= self.options.wait_quiet:
                return round(waited, 2)

    async def run(
        self, name: str, mode: str, rate: float | None, round_no: int, attempt: int = 1
    ) -> Run:
        options = self.options
        run = Run(name, mode, rate, round_no, options.clients, options.room_size, attempt=attempt)
        prefix = f"fo-{name}-{mode}-r{round_no}-a{attempt}"  # fresh users and rooms every time
        layout = Layout.of(prefix, options.clients, options.room_size)
        run.expected = layout.deliveries * options.messages
        base = {
            "mode": "fanout",
            "transport": self.targets[name].transport,
            "url": self.targets[name].url,
            "messages": options.messages,
            "rate": rate,
            "stall_s": options.stall,
        }
        workdir = self.workdir / f"{name}-{mode}-r{round_no}"
        workdir.mkdir(parents=True, exist_ok=True)
        closed_before = await slow_clients_closed(self.targets[name])
        try:
            async with load_processes(layout.configs(options.load_processes, base), workdir) as ls:
                await asyncio.gather(*(load.expect("ready", SETUP_TIMEOUT) for load in ls))
                await self.quiet(name)
                run.waited_for_quiet = await self.machine_quiet(ls)
                await self.window(run, ls)
        except LoadFailed as error:
            run.problems.append(str(error))
        run.catch_up = await self.quiet(name)
        closed_after = await slow_clients_closed(self.targets[name])
        if closed_before is not None and closed_after is not None:
            run.slow_clients_closed = closed_after - closed_before
            if run.slow_clients_closed:
                run.problems.append(f"productflo closed {run.slow_clients_closed} clients 1013")
        return run

    async def window(self, run: Run, loads: list[LoadProcess]) -> None:
        meter = self.meter(run.server, loads)
        start_at = time.time() + START_DELAY
        await asyncio.gather(*(load.tell({"start_at": 1000 * start_at}) for load in loads))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before = meter.snapshot()
        each = [tree_cpu(load.psutil) for load in loads]
        results = await asyncio.gather(*(load.expect("result", RESULT_TIMEOUT) for load in loads))
        after = meter.snapshot()
        run.cpu = Meter.spent(before, after)
        run.load_cores = [
            round((tree_cpu(load.psutil) - used) / run.cpu["wall"], 2)
            for load, used in zip(loads, each, strict=True)
        ]
        last = max((r["lastDelivery"] or 1000 * start_at) for r in results)
        run.seconds = round(last / 1000 - start_at, 4)
        for result in results:
            run.deliveries += result["deliveries"]
            merge(run.delivery, result["delivery"])
            merge(run.ack, result["ack"])
            merge(run.lateness, result["lateness"])
            run.problems.extend(load_problems(result, self.options.messages))
        if run.deliveries != run.expected and not run.problems:
            run.problems.append(f"{run.deliveries} deliveries of {run.expected}")

    async def idle_memory(self, target: Target, connections: int) -> dict[str, Any]:
        """The server's resident memory as idle connections (welcomed, in no room) are opened:
        after IDLE_WARM of them (first-use costs), then at each of --idle-steps evenly spaced
        steps up to `connections`."""
        process = psutil.Process(target.pid)
        prefix = f"idle-{target.name}-{int(time.time())}"
        configs = idle_configs(target, prefix, connections, self.options.load_processes)
        workdir = self.workdir / f"{target.name}-idle"
        workdir.mkdir(parents=True, exist_ok=True)
        warm, steps_after = min(IDLE_WARM, connections // 2), self.options.idle_steps
        totals = [warm + (connections - warm) * k // steps_after for k in range(steps_after + 1)]
        steps: list[dict[str, Any]] = []
        problems: list[str] = []
        try:
            async with load_processes(configs, workdir) as loads:
                for total in totals:
                    steps.append(await self.open_idle(process, loads, total, problems))
        except LoadFailed as error:
            problems.append(str(error))
        grown = steps[-1]["rss_bytes"] - steps[0]["rss_bytes"] if len(steps) > 1 else 0
        added = steps[-1]["connections"] - steps[0]["connections"] if len(steps) > 1 else 0
        return {
            "connections": steps[-1]["connections"] if steps else 0,
            "load_processes": len(configs),
            "steps": steps,
            "kib_per_connection": round(grown / added / 1024, 2) if added else None,
            "problems": problems,
        }

    async def open_idle(
        self, process: psutil.Process, loads: list[LoadProcess], total: int, problems: list[str]
    ) -> dict[str, Any]:
        shares = [
            total // len(loads) + (1 if i < total % len(loads) else 0) for i in range(len(loads))
        ]
        began = time.perf_counter()
        await asyncio.gather(
            *(load.tell({"open": n}) for load, n in zip(loads, shares, strict=True))
        )
        answers = await asyncio.gather(*(load.expect("opened", OPEN_TIMEOUT) for load in loads))
        seconds = time.perf_counter() - began
        opened = sum(a["open"] for a in answers)
        failed, dropped = sum(a["failed"] for a in answers), sum(a["dropped"] for a in answers)
        if failed or dropped or opened != total:
            problems.append(f"at {total}: {opened} open, {failed} failed, {dropped} dropped")
        rss = await settled_rss(process)
        return {
            "connections": opened,
            "rss_bytes": rss,
            "rss_mib": round(rss / 2**20, 1),
            "open_seconds": round(seconds, 2),
        }


async def slow_clients_closed(target: Target) -> int | None:
    """productflo's count of connections it closed 1013 for not keeping up (None elsewhere)."""
    if target.program != "productflo":
        return None
    text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{target.port}/metrics")
    for line in text.splitlines():
        if line.startswith("productflo_slow_clients_closed_total "):
            return int(float(line.split()[1]))
    return 0


async def settled_rss(process: psutil.Process) -> int:
    """The process tree's resident set once two readings 0.5 s apart agree (or after a while)."""
    began = time.perf_counter()
    previous = tree_rss(process)
    while time.perf_counter() - began < RSS_SETTLE_TIMEOUT:
        await asyncio.sleep(0.5)
        now = tree_rss(process)
        if abs(now - previous) <= RSS_SETTLE * previous:
            return now
        previous = now
    return previous
