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


def envelope(code: str, user: str, room: str | None, data: dict[str, Any]) -> str:
    global last_event_id
    last_event_id += 1
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "status": "success",
            "code": code,
            "user_id": user,
            "room_id": room,
            "timestamp": stamp,
            "data": data,
            "event_id": last_event_id,
        }
    )


async def broadcast(room: str, text: str) -> None:
    for member in list(rooms[room]):
        try:
            await member.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            rooms[room].discard(member)


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
                await broadcast(room, text)
            if inbound.get("code") == "chat":
                data = {"message": inbound.get("data", {}).get("message"), "sender": user_id}
                await broadcast(room, envelope("chat_response", user_id, room, data))
    except WebSocketDisconnect:
        pass
    finally:
        for room in joined:
            rooms[room].discard(websocket)


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout.naive", description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=parser.parse_args(argv).port,
        ws="websockets-sansio",
        ws_max_size=MAX_MESSAGE_BYTES,
        timeout_graceful_shutdown=10,
        log_level="info",
        log_config=logs.config(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
