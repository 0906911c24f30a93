"""What waits to be written to one client: bounded in envelopes and in bytes. No I/O.

An `Outgoing` is an envelope with its JSON text, encoded once however many connections it goes
to (the hub hands the same object to every recipient of an event). The `Outbox` of a connection
holds them until its writer takes them; `offer` never waits and says no when either bound would
be passed, which is when the connection is closed 1013 (the client resumes from the log). An
envelope is always taken when the outbox is empty, whatever its size: a history page larger than
the byte bound can still be sent to a client that keeps up.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from dataclasses import dataclass

from productflo.events.models import JsonObject
from productflo.jsontext import encode


class Outgoing:
    """An envelope on its way out; its JSON (and its WebSocket frame) is encoded on first use and
    then shared."""

    __slots__ = ("_data", "_event", "_frame", "envelope")

    def __init__(self, envelope: JsonObject) -> None:
        self.envelope = envelope
        self._data: bytes | None = None
        self._frame: bytes | None = None
        self._event: str | None = None

    @property
    def data(self) -> bytes:
        """The envelope as JSON, UTF-8."""
        if self._data is None:
            self._data = encode(self.envelope)
        return self._data

    @property
    def text(self) -> str:
        return self.data.decode()

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def frame(self) -> bytes:
        """The JSON as a WebSocket text frame from a server: unmasked, whole, uncompressed
        (RFC 6455, 5.2), the same bytes for every connection (productflo.transports.wire)."""
        if self._frame is None:
            self._frame = text_frame(self.data)
        return self._frame

    @property
    def event(self) -> str:
        """The envelope as the Socket.IO EVENT packet a client's `message` handler gets,
        `2["message",{"data":envelope}]` in the default namespace: the same text for every
        connection (productflo.transports.socketio)."""
        if self._event is None:
            self._event = f'2["message",{{"data":{self.text}}}]'
        return self._event


def text_frame(payload: bytes) -> bytes:
    """`payload` (UTF-8 text) as one whole, unmasked WebSocket text frame, as a server sends it."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _FIN_TEXT, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    return header + payload


_FIN_TEXT = 0x81  # the last (only) frame of a text message


@dataclass(frozen=True)
class Close:
    """The last item of an outbox: close the socket with this code."""

    code: int
    reason: str


class Outbox:
    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[Outgoing | Close] = deque()
        self._bytes = 0
        self._taken = asyncio.Event()  # set whenever the writer takes an item
        self._added = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, item: Outgoing) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._bytes + item.size <= self.max_bytes

    def offer(self, item: Outgoing) -> bool:
        """Queue `item` if both bounds allow it; never waits."""
        if not self.fits(item):
            return False
        self._push(item)
        return True

    async def put(self, item: Outgoing) -> None:
        """Queue `item` once there is room for it: for a replay, sent as fast as the client
        reads."""
        while not self.fits(item):
            self._taken.clear()
            await self._taken.wait()
        self._push(item)

    def close_with(self, last: list[Outgoing], close: Close, *, keep: bool) -> None:
        """End the outbox: `last`, then `close`, after what is queued (`keep`) or instead of it.
        What is queued is kept only while the bounds allow; the final items always go in."""
        if not keep or not all(self.fits(item) for item in last):
            self._items.clear()
            self._bytes = 0
        for item in last:
            self._push(item)
        self._items.append(close)
        self._added.set()

    async def take(self, max_items: int, max_bytes: int) -> tuple[list[Outgoing], Close | None]:
        """Wait for something queued, then take envelopes in order, up to `max_items` and
        `max_bytes` (at least one), and the close when it comes next: a writer sends what piled
        up while it was writing in one go."""
        while not self._items:
            self._added.clear()
            await self._added.wait()
        taken: list[Outgoing] = []
        size = 0
        close: Close | None = None
        while self._items and len(taken) < max_items:
            item = self._items[0]
            if isinstance(item, Close):
                self._items.popleft()
                close = item
                break
            if taken and size + item.size > max_bytes:
                break
            self._items.popleft()
            self._bytes -= item.size
            size += item.size
            taken.append(item)
        self._taken.set()
        return taken, close

    async def emptied(self) -> None:
        """Return once the writer has taken everything queued so far."""
        while self._items:
            self._taken.clear()
            await self._taken.wait()

    def _push(self, item: Outgoing) -> None:
        self._items.append(item)
        self._bytes += item.size
        self._added.set()
