"""Socket.IO's long-polling transport spoken by hand, as a client that batches its packets does."""

from __future__ import annotations

import json

import httpx
import pytest

from productflo.envelopes import WELCOME_MESSAGE
from tests.conftest import ServerThread
from tests.transports.test_socketio import _poll

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
POLLING = {"EIO": "4", "transport": "polling"}


async def test_a_post_of_many_packets_is_taken_whole(server: ServerThread) -> None:
    """Socket.IO's clients send whatever they have queued in one POST (a burst, or the outbox
    resent after a reconnect); python-engineio refused more than 16 packets with 400 and
    dropped the session, so a client resending 40 was dropped again on every reconnect."""
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        opened = await http.get("/ws/", params=POLLING)
        sid = json.loads(opened.text[1:])["sid"]
        query = {**POLLING, "sid": sid}
        assert (await http.post("/ws/", params=query, content="40")).status_code == 200
        packets = await _poll(http, sid)
        while not any(WELCOME_MESSAGE in p for p in packets):
            packets += await _poll(http, sid)

        chats = [
            {"code": "chat", "room_id": "r", "client_msg_id": f"m{n}", "data": {"message": f"{n}"}}
            for n in range(40)
        ]
        body = "\x1e".join("42" + json.dumps(["message", chat]) for chat in chats)
        posted = await http.post("/ws/", params=query, content=body)
        assert posted.status_code == 200, posted.text

        answered: list[str] = []
        while len(answered) < len(chats):
            for packet in await _poll(http, sid):
                envelope = json.loads(packet[2:])[1]["data"] if packet.startswith("42") else {}
                if envelope.get("code") == "chat_response":
                    answered.append(envelope["client_msg_id"])
    assert answered == [chat["client_msg_id"] for chat in chats]
