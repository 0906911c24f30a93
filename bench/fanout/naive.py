"""The fan-out benchmark's Python baseline: rooms in memory, every chat broadcast, nothing stored.

    .venv/bin/python -m bench.fanout.naive [--port 8000]

A FastAPI WebSocket endpoint on /ws, run by `uvicorn.run` with the settings `productflo serve`
uses by default (its event loop and HTTP choices, websockets-sansio, 64 KiB frames, its log
configuration), one process; GET /readyz answers once it listens. The user is the `user_id` query
parameter; the welcome, `join` (the room is told, the joiner included) and `chat` (every member
receives a `chat_response`, the sender included) speak the native protocol's envelopes, encoded
once per message and written to each member in turn.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from productflo import logs

MAX_MESSAGE_BYTES = 65536  # productflo's default PRODUCTFLO_MAX_MESSAGE_BYTES

app = FastAPI()
rooms: defaultdict[str, set[WebSocket]] = defaultdict(set)
last_event_id = 0


def envelope(
    code: str, user: str, room: str | None, data: dict[str, Any], client_msg_id: Any = None
) -> str:
    """The JSON text of a success envelope with the next event id (and the client_msg_id it
    answers, when given)."""
    global last_event_id
    last_event_id += 1
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    message = {
        "status": "success",
        "code": code,
        "user_id": user,
        "room_id": room,
        "timestamp": stamp,
        "data": data,
        "event_id": last_event_id,
    }
    if client_msg_id is not None:
        message["client_msg_id"] = client_msg_id
    return json.dumps(message)


async def broadcast(members: set[WebSocket], text: str) -> None:
    """Write `text` to each of `members` in turn, forgetting those that have gone."""
    for member in list(members):
        try:
            await member.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            members.discard(member)


@app.websocket("/ws")
async def chat(websocket: WebSocket, user_id: str) -> None:
    await websocket.accept()
    await websocket.send_text(envelope("system", user_id, None, {"message": "Welcome"}))
    joined: set[str] = set()
    try:
        while True:
            inbound = json.loads(await websocket.receive_text())
            room = str(inbound.get("room_id"))
            if room not in joined:
                joined.add(room)
                rooms[room].add(websocket)
                details = {"action": "join", "user_id": user_id, "room_id": room}
                text = envelope("system", user_id, room, {"message": "joined", "details": details})
                await broadcast(rooms[room], text)
            if inbound.get("code") == "chat":
                data = {"message": inbound.get("data", {}).get("message"), "sender": user_id}
                await broadcast(rooms[room], envelope("chat_response", user_id, room, data))
    except WebSocketDisconnect:
        pass
    finally:
        for room in joined:
            rooms[room].discard(websocket)


async def ready() -> dict[str, str]:
    return {"status": "ok"}


def serve(served: FastAPI, argv: list[str] | None, prog: str, description: str | None) -> int:
    """Run a baseline server as `productflo serve` runs by default, on --port, one process, with
    GET /readyz (the docs benchmark's relay runs this way too)."""
    served.get("/readyz")(ready)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=int, default=8000)
    uvicorn.run(
        served,
        host="127.0.0.1",
        port=parser.parse_args(argv).port,
        ws="websockets-sansio",
        ws_max_size=MAX_MESSAGE_BYTES,
        timeout_graceful_shutdown=10,
        log_level="info",
        log_config=logs.config(),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve(app, argv, "python -m bench.fanout.naive", __doc__)


if __name__ == "__main__":
    sys.exit(main())
