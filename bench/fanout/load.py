"""The load generator processes (load.js) as this process sees them: started, told, heard.

Each process reads a config (its argument) and commands on stdin, and writes one JSON object a
line on stdout; load.js's header describes the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.fanout.servers import HERE, Target, node_executable

LOAD_JS = HERE / "load.js"
LINE_LIMIT = 1 << 24  # a result line holds latency histograms: well under this
EXIT_TIMEOUT = 10.0
IDLE_PER_PROCESS = 5000  # idle connections per load process at most

Message = dict[str, Any]


class LoadFailed(RuntimeError):
    """A load process said it failed, exited, or did not answer in time."""


@dataclass
class LoadProcess:
    process: asyncio.subprocess.Process
    stderr: Path

    @property
    def psutil(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    async def tell(self, command: Message) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def expect(self, event: str, within: float) -> Message:
        """The next line, which must be `event`, within `within` seconds."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raise LoadFailed(f"no {event!r} from load.js within {within:.0f} s") from None
        if not line:
            await self.process.wait()
            raise LoadFailed(
                f"load.js exited with {self.process.returncode} before {event!r}:"
                f" {self.stderr.read_text(errors='replace')[-2000:]}"
            )
        message: Message = json.loads(line)
        if message.get("event") != event:
            raise LoadFailed(f"load.js said {message.get('event')!r}, not {event!r}: {message}")
        return message

    async def stop(self) -> None:
        """Close its connections and let it exit; kill it when it does not."""
        with contextlib.suppress(ConnectionError, AssertionError):
            await self.tell({"close": True})
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def load_processes(configs: list[Message], workdir: Path) -> AsyncIterator[list[LoadProcess]]:
    """One load.js per config, stopped when the block ends."""
    node = node_executable()
    started: list[LoadProcess] = []
    try:
        for index, config in enumerate(configs):
            stderr = workdir / f"load-{index}.stderr"
            with stderr.open("wb") as errors:
                process = await asyncio.create_subprocess_exec(
                    node,
                    str(LOAD_JS),
                    json.dumps(config),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errors,
                    limit=LINE_LIMIT,
                    cwd=HERE,
                )
            started.append(LoadProcess(process, stderr))
        yield started
    finally:
        await asyncio.gather(*(load.stop() for load in started), return_exceptions=True)


@dataclass(frozen=True)
class Layout:
    """Who is in which room, and which load process drives each room (whole rooms per process,
    so that a latency is read on the clock it was written with)."""

    rooms: list[tuple[str, list[str]]]  # room -> its users, in client order

    @classmethod
    def of(cls, prefix: str, clients: int, room_size: int) -> Layout:
        rooms = []
        for first in range(0, clients, room_size):
            users = [f"{prefix}-u{i}" for i in range(first, min(first + room_size, clients))]
            rooms.append((f"{prefix}-room{first // room_size}", users))
        return cls(rooms)

    @property
    def clients(self) -> int:
        return sum(len(users) for _, users in self.rooms)

    @property
    def deliveries(self) -> int:
        """Every message reaches every member of its room, its sender included."""
        return sum(len(users) ** 2 for _, users in self.rooms)

    def configs(self, processes: int, base: Message) -> list[Message]:
        """The rooms dealt round-robin over `processes` load processes (none left empty)."""
        index = {user: i for i, user in enumerate(u for _, users in self.rooms for u in users)}
        shares: list[list[Message]] = [[] for _ in range(min(processes, len(self.rooms)))]
        for n, (room, users) in enumerate(self.rooms):
            entry = {"room": room, "users": [{"user": u, "index": index[u]} for u in users]}
            shares[n % len(shares)].append(entry)
        return [{**base, "rooms": share, "total_clients": self.clients} for share in shares]


def idle_configs(target: Target, prefix: str, connections: int, processes: int) -> list[Message]:
    """Enough idle-mode load processes for `connections` (at least `processes`)."""
    count = max(processes, math.ceil(connections / IDLE_PER_PROCESS))
    return [
        {
            "mode": "idle",
            "transport": target.transport,
            "url": target.url,
            "user_prefix": f"{prefix}-p{n}",
        }
        for n in range(count)
    ]
