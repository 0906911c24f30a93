"""Outgoing's WebSocket frame, read back by the websockets library's own frame parser, its
Socket.IO packet, read back by python-socketio's own packet decoder, and the writer's batches
taken from an Outbox."""

from __future__ import annotations

import pytest
from socketio.packet import EVENT, Packet
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from productflo.outbox import Close, Outbox, Outgoing

pytestmark = pytest.mark.anyio


def _parsed(data: bytes) -> list[Frame]:
    """Every frame in `data`, as a client (which expects unmasked frames) parses them."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("a frame was cut short")
    return frames


@pytest.mark.parametrize("size", [25, 125, 126, 127, 65_535, 65_536, 200_000])
def test_a_frame_is_one_whole_unmasked_text_frame_of_the_envelopes_text(size: int) -> None:
    """Every length encoding (7-bit, 16-bit, 64-bit) at its edges."""
    empty = len(Outgoing({"data": {"message": ""}}).text)
    message = Outgoing({"data": {"message": "x" * (size - empty)}})
    assert len(message.text) == size
    [frame] = _parsed(message.frame)
    assert frame.opcode is Opcode.TEXT and frame.fin and not frame.rsv1
    assert frame.data.decode() == message.text


def test_frames_written_back_to_back_read_as_separate_messages() -> None:
    messages = [Outgoing({"n": n, "text": "é" * n}) for n in (1, 200, 70_000)]
    frames = _parsed(b"".join(message.frame for message in messages))
    assert [frame.data.decode() for frame in frames] == [message.text for message in messages]


def test_the_socketio_packet_is_what_emit_message_data_envelope_would_send() -> None:
    """Decoded as a client decodes it: the `message` event in the default namespace, with one
    argument, `{"data": envelope}`: text beyond ASCII, escapes and integers past 64 bits kept."""
    envelope = {
        "type": "chat",
        "data": {"message": 'caf\u00e9 \U0001f680 "quoted" \\ \n', "n": 2**70, "x": 0.5},
        "room_id": None,
    }
    packet = Packet(encoded_packet=Outgoing(envelope).event)
    # No namespace written is the default one; no id: no acknowledgement asked of the client.
    assert packet.packet_type == EVENT and packet.namespace is None and packet.id is None
    assert packet.data == ["message", {"data": envelope}]


async def test_a_writer_takes_what_piled_up_within_its_bounds_and_the_close_after_it() -> None:
    outbox = Outbox(max_items=100, max_bytes=1 << 20)
    small = [Outgoing({"n": n}) for n in range(5)]
    big = Outgoing({"text": "x" * 1000})
    for item in [*small, big, small[0]]:
        assert outbox.offer(item)
    taken, close = await outbox.take(3, 1 << 20)
    assert (taken, close) == (small[:3], None)
    taken, close = await outbox.take(100, 500)  # the big one would pass the byte bound
    assert (taken, close) == (small[3:], None)
    taken, close = await outbox.take(100, 500)  # ... yet it goes alone: at least one is taken
    assert (taken, close) == ([big], None)
    outbox.close_with([], Close(1012, "restart"), keep=True)
    taken, close = await outbox.take(100, 1 << 20)
    assert (taken, close) == ([small[0]], Close(1012, "restart"))
    assert len(outbox) == 0
