"""The documents benchmark's baseline: a y-websocket-style relay, documents in memory, no log.

    .venv/bin/python -m bench.docs_relay [--port 8000]

What y-websocket's server does, in the native protocol's envelopes (SPEC section 7), so that the
same editors load it and productflo: each document is a Yjs document in memory (pycrdt, as
productflo's own arithmetic), `doc_open` is answered by a `doc_sync` of what the client's state
vector lacks, and each `doc_update` is applied to the document and broadcast to everyone who
opened it, the sender included (its copy is its acknowledgement, as with productflo), encoded
once and written to each opener in turn. Nothing is stored: a restart loses every document.

A FastAPI WebSocket endpoint on /ws, run by uvicorn with the settings `productflo serve` uses by
default, in one process, as the fan-out benchmark's naive server is; GET /readyz answers once it
listens. The user is the `user_id` query parameter.
"""

from __future__ import annotations

import base64
import json
import sys
from collections import defaultdict
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pycrdt import Doc

from bench.fanout.naive import broadcast, envelope, serve

app = FastAPI()
documents: defaultdict[tuple[str, str], Doc[Any]] = defaultdict(Doc)
openers: defaultdict[tuple[str, str], set[WebSocket]] = defaultdict(set)


def sync(user: str, room: str, doc_id: str, inbound: dict[str, Any]) -> str:
    """The doc_sync answering a doc_open: what the client's state vector lacks."""
    doc = documents[(room, doc_id)]
    state_vector = inbound.get("data", {}).get("state_vector")
    missing = doc.get_update(base64.b64decode(state_vector) if state_vector else None)
    data = {
        "doc_id": doc_id,
        "update": base64.b64encode(missing).decode(),
        "state_vector": base64.b64encode(doc.get_state()).decode(),
    }
    return envelope("doc_sync", user, room, data, inbound.get("client_msg_id"))


@app.websocket("/ws")
async def relay(websocket: WebSocket, user_id: str) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"status": "success", "code": "system", "data": {}}))
    opened: set[tuple[str, str]] = set()
    try:
        while True:
            inbound = json.loads(await websocket.receive_text())
            room, doc_id = str(inbound.get("room_id")), str(inbound.get("data", {}).get("doc_id"))
            key = (room, doc_id)
            if inbound.get("code") == "doc_open":
                opened.add(key)
                openers[key].add(websocket)
                await websocket.send_text(sync(user_id, room, doc_id, inbound))
            elif inbound.get("code") == "doc_update":
                update = inbound["data"]["update"]
                documents[key].apply_update(base64.b64decode(update))
                data = {"doc_id": doc_id, "update": update}
                echo = inbound.get("client_msg_id")
                await broadcast(openers[key], envelope("doc_update", user_id, room, data, echo))
    except WebSocketDisconnect:
        pass
    finally:
        for key in opened:
            openers[key].discard(websocket)


def main(argv: list[str] | None = None) -> int:
    return serve(app, argv, "python -m bench.docs_relay", __doc__)


if __name__ == "__main__":
    sys.exit(main())
