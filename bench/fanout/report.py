"""The fan-out results: the JSON summary, the Markdown tables, the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.fanout.measure import Histogram, Run, merge

LOAD_SATURATED = 0.9  # a load process using this much of its core may be what limits the rate
MACHINE_FULL = 0.9  # the machine's cores this busy (as a share of them all): nothing to spare
NONE = "-"
RATIO_BASIS = "node"  # rates are also given as a multiple of this server's
OVER_BASIS = f"over_{RATIO_BASIS}"  # the summary's key for that multiple


def percentile(histogram: Histogram, fraction: float) -> float | None:
    """The value (ms, within 1 %) below which `fraction` of the histogram's counts lie."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = fraction * total, 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return round(1.01**key, 2)
    return round(1.01 ** max(histogram), 2)


def percentiles(histogram: Histogram) -> dict[str, float | None]:
    return {name: percentile(histogram, cut) for name, cut in (("p50", 0.5), ("p99", 0.99))}


def pooled(runs: list[Run], name: str) -> Histogram:
    total: Histogram = {}
    for run in runs:
        merge(total, {str(k): v for k, v in getattr(run, name).items()})
    return total


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for row in rows for name in row})
    return {n: round(statistics.median([r[n] for r in rows if n in r]), 2) for n in names}


def run_summary(run: Run) -> dict[str, Any]:
    return {
        "round": run.round_no + 1,
        "ok": run.ok,
        "problems": run.problems,
        "deliveries": run.deliveries,
        "expected_deliveries": run.expected,
        "seconds": run.seconds,
        "deliveries_per_s": round(run.deliveries_per_s),
        "messages_per_s": round(run.deliveries_per_s / run.room_size),
        "cpu_us_per_delivery": run.us_per_delivery(),
        "cpu_cores": run.cores(),
        "load_process_cores": run.load_cores,
        "catch_up": run.catch_up,
        "delivery_latency_ms": percentiles(run.delivery),
        "ack_latency_ms": percentiles(run.ack),
        "send_lateness_ms": percentiles(run.lateness) if run.lateness else None,
        "productflo_slow_clients_closed": run.slow_clients_closed,
        "busy_machine": run.busy,
        "attempt": run.attempt,
        "waited_for_quiet_s": run.waited_for_quiet,
    }


def server_summary(runs: list[Run], discarded: list[Run] | None = None) -> dict[str, Any]:
    """Medians over the lossless runs; latency histograms pooled over them; every run listed,
    and the `discarded` ones, run again because the machine was busy during their window."""
    good = [run for run in runs if run.ok]
    rates = [run.deliveries_per_s for run in good]
    cores = median_of([run.cores() for run in good])
    return {
        "lossless_runs": len(good),
        "failed_runs": len(runs) - len(good),
        "deliveries_per_s_median": round(statistics.median(rates)) if rates else None,
        "deliveries_per_s_runs": [round(run.deliveries_per_s) if run.ok else None for run in runs],
        "messages_per_s_median": round(statistics.median(rates) / good[0].room_size)
        if good
        else None,
        "cpu_us_per_delivery_median": median_of([run.us_per_delivery() for run in good]),
        "cpu_cores_median": cores,
        "load_saturated": any(c >= LOAD_SATURATED for run in good for c in run.load_cores),
        "delivery_latency_ms": percentiles(pooled(good, "delivery")),
        "ack_latency_ms": percentiles(pooled(good, "ack")),
        "send_lateness_ms": percentiles(pooled(good, "lateness")) if good else None,
        "runs": [run_summary(run) for run in runs],
        "discarded_busy_runs": [run_summary(run) for run in discarded or []],
    }


def mode_summary(runs: dict[str, list[Run]], discarded: dict[str, list[Run]]) -> dict[str, Any]:
    """Each server's summary, with its median rate as a multiple of Node's (the issue's targets
    are such ratios) when both were measured."""
    servers = {server: server_summary(done, discarded[server]) for server, done in runs.items()}
    node = servers.get(RATIO_BASIS, {}).get("deliveries_per_s_median")
    for section in servers.values():
        median = section["deliveries_per_s_median"]
        section[OVER_BASIS] = round(median / node, 2) if median and node else None
    return servers


def offered_servers(summary: dict[str, Any]) -> dict[str, Any]:
    servers: dict[str, Any] = summary.get("offered", {}).get("servers", {})
    return servers


def lossless(summary: dict[str, Any]) -> bool:
    """Every run of every mode lost, doubled and refused nothing; every idle connection held."""
    modes = [summary["flat_out"], offered_servers(summary)]
    runs_ok = all(s["failed_runs"] == 0 for mode in modes for s in mode.values())
    memory_ok = all(not m["problems"] for m in summary.get("idle_memory", {}).values())
    return runs_ok and memory_ok


# -- Markdown ------------------------------------------------------------------------------------


def _ms(latency: dict[str, float | None]) -> str:
    def cell(value: float | None) -> str:
        return NONE if value is None else (f"{value:.1f}" if value < 100 else f"{value:,.0f}")

    return f"{cell(latency.get('p50'))} / {cell(latency.get('p99'))}"


def _us(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}"


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _limits(section: dict[str, Any], cpus: int) -> str:
    """What else held the rate: a load process at its core's limit, or every core busy."""
    if section["load_saturated"]:
        return " (load-bound)"
    machine = section["cpu_cores_median"].get("machine", 0.0)
    return " (all cores busy)" if machine >= MACHINE_FULL * cpus else ""


def flat_table(summary: dict[str, Any]) -> str:
    config = summary["config"]
    rows = [
        [
            f"{config['clients']} clients, rooms of {config['room_size']}, "
            f"{config['messages']} msgs each",
            "deliveries/s (median)",
            f"over {RATIO_BASIS}",
            "rounds",
            "server CPU µs/delivery (+ catch-up)",
            "PostgreSQL µs/delivery (+ catch-up)",
            "delivery p50 / p99 ms",
            "ack p50 / p99 ms",
            "lossless",
        ]
    ]
    for server, s in summary["flat_out"].items():
        per = s["cpu_us_per_delivery_median"]
        median = s["deliveries_per_s_median"]
        catch_up = per.get("server_with_catch_up")
        rows.append(
            [
                server + _limits(s, summary["environment"].get("cpus") or 1),
                (NONE if not s["runs"] else "failed") if median is None else f"**{median:,}**",
                NONE if s[OVER_BASIS] is None else f"{s[OVER_BASIS]:.2f}x",
                " / ".join("failed" if r is None else f"{r:,}" for r in s["deliveries_per_s_runs"]),
                f"{_us(per.get('server'))} ({_us(catch_up)})",
                _us(per.get("postgres_with_catch_up")) if "postgres" in per else NONE,
                _ms(s["delivery_latency_ms"]),
                _ms(s["ack_latency_ms"]),
                f"{s['lossless_runs']}/{s['lossless_runs'] + s['failed_runs']}",
            ]
        )
    return _markdown(rows)


def offered_table(summary: dict[str, Any]) -> str:
    offered = summary.get("offered")
    memory = summary.get("idle_memory", {})
    rate = offered["rate_messages_per_s"] if offered else None
    heading = f"at {rate:,.0f} msgs/s offered" if rate else "offered load"
    rows = [
        [
            "server",
            f"{heading}: delivery p50 / p99 ms",
            "ack p50 / p99 ms",
            "server CPU µs/delivery",
            "lossless",
            "idle RSS per connection",
        ]
    ]
    servers = list(summary["flat_out"])
    for server in servers:
        s = offered["servers"].get(server) if offered else None
        m = memory.get(server)
        idle = NONE
        if m and m["kib_per_connection"] is not None:
            idle = f"{m['kib_per_connection']:.1f} KiB (at {m['connections']:,})"
            idle += " !" if m["problems"] else ""
        rows.append(
            [
                server,
                _ms(s["delivery_latency_ms"]) if s else NONE,
                _ms(s["ack_latency_ms"]) if s else NONE,
                _us(s["cpu_us_per_delivery_median"].get("server")) if s else NONE,
                f"{s['lossless_runs']}/{s['lossless_runs'] + s['failed_runs']}" if s else NONE,
                idle,
            ]
        )
    return _markdown(rows)


def tables(summary: dict[str, Any]) -> str:
    notes = []
    for mode in ("flat_out", "offered"):
        servers = summary["flat_out"] if mode == "flat_out" else offered_servers(summary)
        for server, s in servers.items():
            for run in s["runs"]:
                which = f"- {mode} {server} round {run['round']}"
                if run["problems"]:
                    notes.append(f"{which}: FAILED {run['problems']}")
                if run["busy_machine"]:
                    notes.append(f"{which}: machine busy ({run['cpu_cores'].get('others')} cores)")
            for run in s["discarded_busy_runs"]:
                others = run["cpu_cores"].get("others")
                notes.append(
                    f"- {mode} {server} round {run['round']}: attempt {run['attempt']} run again,"
                    f" the machine was busy ({others} cores of other work)"
                )
    for server, m in summary.get("idle_memory", {}).items():
        notes.extend(f"- idle memory {server}: FAILED {p}" for p in m["problems"])
    cpus = summary["environment"].get("cpus") or 1
    if any(_limits(s, cpus) for s in summary["flat_out"].values()):
        notes.append(
            f"- all cores busy: the {cpus} cores were at least {MACHINE_FULL:.0%} busy in the"
            " median window (server, PostgreSQL, load processes and other work together)"
        )
    parts = [flat_table(summary), "", offered_table(summary)]
    return "\n".join(parts + (["", *notes] if notes else []))


# -- the plot ------------------------------------------------------------------------------------


def plot(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # without pyplot: no GUI backend, quicker to import

    servers = list(summary["flat_out"])
    figure = Figure(figsize=(15, 4.5))
    rates, latency, memory = figure.subplots(1, 3)
    for x, server in enumerate(servers):
        s = summary["flat_out"][server]
        if s["deliveries_per_s_median"] is not None:
            rates.bar(x, s["deliveries_per_s_median"], color=f"C{x}")
        runs = [r for r in s["deliveries_per_s_runs"] if r is not None]
        rates.plot([x] * len(runs), runs, "k.", markersize=6)
    rates.set_xticks(range(len(servers)), servers)
    rates.set_ylabel("deliveries/s (median; dots: rounds)")
    rates.set_title("flat out")

    offered = summary.get("offered") or {"servers": {}, "rate_messages_per_s": 0}
    width = 0.2
    for x, server in enumerate(servers):
        bars = [
            (summary["flat_out"][server], "flat"),
            (offered["servers"].get(server), "offered"),
        ]
        for n, (section, label) in enumerate(bars):
            if not section:
                continue
            p = section["delivery_latency_ms"]
            if p["p50"] is None:
                continue
            at = x + (n - 0.5) * 2 * width
            latency.bar(at, p["p99"], width, color=f"C{x}", alpha=0.35 if n == 0 else 0.7)
            latency.bar(at, p["p50"], width, color=f"C{x}")
            latency.text(at, p["p99"], label, ha="center", va="bottom", fontsize=7)
    latency.set_yscale("log")
    latency.set_xticks(range(len(servers)), servers)
    latency.set_ylabel("delivery latency ms (dark p50, light p99)")
    latency.set_title(f"flat out / at {offered['rate_messages_per_s']:,.0f} msgs/s offered")

    for x, server in enumerate(servers):
        m = summary.get("idle_memory", {}).get(server)
        if not m or not m["steps"]:
            continue
        base = m["steps"][0]["rss_mib"]
        memory.plot(
            [step["connections"] for step in m["steps"]],
            [step["rss_mib"] - base for step in m["steps"]],
            "o-",
            color=f"C{x}",
            label=f"{server}: {m['kib_per_connection']} KiB/conn",
        )
    memory.set_xlabel("idle connections")
    memory.set_ylabel("server RSS growth MiB")
    memory.set_title("idle memory")
    if memory.get_lines():
        memory.legend()
    environment = summary["environment"]
    figure.suptitle(
        f"fan-out: {summary['config']['clients']} clients in rooms of"
        f" {summary['config']['room_size']} — {environment.get('date')},"
        f" commit {str(environment.get('commit'))[:7]}, {environment.get('cpus')} CPUs"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
