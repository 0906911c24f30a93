"""Fixtures of the in-memory tests: a log and the processes started on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from productflo.settings import Settings
from tests.unit.memory import MemoryLog, MemoryProcess

Start = Callable[..., Awaitable[MemoryProcess]]

# Pinned, so that the environment the tests run in cannot change them.
DEFAULTS: dict[str, Any] = {
    "max_message_bytes": 65536,
    "rate_limit": 1000,
    "replay_limit": 10000,
    "outbound_queue_size": 1000,
    "outbound_queue_bytes": 1024 * 1024,
    "poll_interval": 0.5,
}


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
async def start(log: MemoryLog) -> AsyncIterator[Start]:
    """`await start(**setting_overrides)`: a process on the test's log, stopped after the test."""
    started: list[MemoryProcess] = []

    async def start_process(**overrides: Any) -> MemoryProcess:
        settings = Settings(**{**DEFAULTS, **overrides})
        process = MemoryProcess(log, settings)
        await process.start()
        started.append(process)
        return process

    yield start_process
    for process in started:
        await process.stop()
