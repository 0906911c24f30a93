"""Fixtures that watch the server's own WebSocket write path (productflo.transports.wire)."""

from __future__ import annotations

from typing import Any

import pytest

from productflo.transports import wire


@pytest.fixture
def frame_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many frames each call of the server's frames path wrote, from here on."""
    writes: list[int] = []
    original = wire.FrameProtocol.write_frames

    async def counted(self: wire.FrameProtocol, frames: Any) -> None:
        writes.append(len(frames))
        await original(self, frames)

    monkeypatch.setattr(wire.FrameProtocol, "write_frames", counted)
    return writes


@pytest.fixture
def socket_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For each write to a socket from here on, how many of the protocol's writes it carried."""
    writes: list[int] = []
    original = wire._TurnWriter._flush

    def counted(self: wire._TurnWriter) -> None:
        if self._pending:
            writes.append(len(self._pending))
        original(self)

    monkeypatch.setattr(wire._TurnWriter, "_flush", counted)
    return writes
