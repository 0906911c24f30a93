"""uvicorn's WebSocket protocol (websockets, sans-I/O) with one thing added: whole frames written
straight to the socket, many in one write.

Through ASGI, every envelope is a `websocket.send` message of its own: a frame built for it, a few
awaits, and one `write()` system call, for every recipient. Yet a server's frames are not masked,
so an uncompressed frame's bytes are the same for every connection it goes to: they are built once
per event (`Outgoing.frame`, productflo.outbox), and a connection's writer hands
over everything queued for it in one call, one system call.

The protocol offers that as an ASGI extension, `scope["extensions"]["productflo.frames"]` =
`{"write": write}` (an ASGI server may put in an extension whatever its apps agree on). Under any
other server the extension is absent and the native transport sends through ASGI as before.

Frames written this way are never compressed, so a connection that negotiated permessage-deflate
(only offered with PRODUCTFLO_WS_COMPRESSION=1: compressing each envelope for each recipient cost
a tenth of the server's CPU under load) does without the extension: its envelopes go through ASGI
and websockets compresses each, as the client asked.

Whatever the protocol writes in one turn of the event loop, through this path or any other (a
frame websockets built, a pong, the close), goes to the socket in one write at the end of the turn
and in the order it was written (`_TurnWriter`): python-engineio's writer sends a Socket.IO
client's queued packets one `send` at a time, one system call each before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

EXTENSION = "productflo.frames"
# `{"register": callback}`: the callback is called, instead of the protocol closing the connection
# itself with 1012, when the server shuts down (FrameProtocol.shutdown).
SHUTDOWN = "productflo.shutdown"


class _TurnWriter:
    """A transport whose writes within one turn of the event loop reach the socket as one write,
    at the end of the turn, in order. A close sends what was written first; an abort drops it, as
    the transport's own abort drops its buffer. Everything else is the transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class FrameProtocol(WebSocketsSansIOProtocol):
    """`productflo serve` runs uvicorn with this class as its WebSocket protocol (`ws=`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = _TurnWriter(self.transport)  # type: ignore[assignment]
        self._on_shutdown: list[Callable[[], None]] = []

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.close_sent:
            return  # a refused handshake is closed at once
        self.scope["extensions"][SHUTDOWN] = {"register": self._on_shutdown.append}
        if not self.conn.extensions:  # uncompressed
            self.scope["extensions"][EXTENSION] = {"write": self.write_frames}

    def shutdown(self) -> None:
        """The server is stopping. uvicorn's own protocol closes the connection there and then
        with 1012, dropping the acknowledgements of messages it had taken and was committing. An
        app that registered for it is told instead and closes the connection itself once those
        are out; uvicorn waits for that (timeout_graceful_shutdown) before it cancels the app."""
        accepted = self.handshake_complete and self.initial_response is None
        if self._on_shutdown and accepted and not self.close_sent:
            self.stop_keepalive()
            callbacks, self._on_shutdown = self._on_shutdown, []
            for callback in callbacks:
                callback()
            return
        super().shutdown()

    async def write_frames(self, frames: Sequence[bytes]) -> None:
        """Write whole frames in one write, once the socket's buffer has room (as `send` does).
        Raises ClientDisconnected once the connection is closing or gone."""
        await self.writable.wait()
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(b"".join(frames))
