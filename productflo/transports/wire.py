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
"""

from __future__ import annotations

from collections.abc import Sequence

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

EXTENSION = "productflo.frames"


class FrameProtocol(WebSocketsSansIOProtocol):
    """`productflo serve` runs uvicorn with this class as its WebSocket protocol (`ws=`)."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # Upgraded (a refused handshake is closed at once) and uncompressed: the app runs.
        if not self.close_sent and not self.conn.extensions:
            self.scope["extensions"][EXTENSION] = {"write": self.write_frames}

    async def write_frames(self, frames: Sequence[bytes]) -> None:
        """Write whole frames in one write, once the socket's buffer has room (as `send` does).
        Raises ClientDisconnected once the connection is closing or gone."""
        await self.writable.wait()
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(b"".join(frames))
