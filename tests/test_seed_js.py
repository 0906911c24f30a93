"""The seed document's JavaScript examples, unchanged, in Node against a real server.

`tests/js/seed_native.js` holds the native WebSocket examples verbatim and a harness standing in for
the browser (see its header). It prints every console.log call of the example as one JSON array per
line: `["Connection established"]`, `["Received:", {...envelope...}]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from productflo.auth import mint
from productflo.envelopes import WELCOME_MESSAGE
from tests.conftest import ServerThread

JS = Path(__file__).resolve().parent / "js"
SCRIPT = JS / "seed_native.js"
SEED_USER = "user-123"
SEED_ROOM = "product-456"
NODE_TIMEOUT = 30.0


def node() -> str:
    """The node executable and installed packages, or a failure that says how to get them."""
    executable = shutil.which("node")
    if executable is None:
        pytest.fail("node is not on PATH: the seed's JavaScript examples need Node.js 20+")
    if not all((JS / "node_modules" / package).is_dir() for package in ("ws", "socket.io-client")):
        pytest.fail(
            f"{JS / 'node_modules'} is missing: run `make test`, or `npm ci` in {JS}",
            pytrace=False,
        )
    return executable


def run_example(server: ServerThread, scenario: str, text: str) -> list[list[Any]]:
    """Run one example to completion; return what it printed (the harness's JSON lines)."""
    env = {
        **os.environ,
        "PRODUCTFLO_TEST_ORIGIN": server.ws,
        "PRODUCTFLO_TEST_TOKEN": mint(server.settings, SEED_USER),
        "PRODUCTFLO_TEST_TIMEOUT_MS": "10000",
    }
    output = run_node([str(SCRIPT), scenario, text], env)
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def run_node(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run a script of tests/js to completion; what it printed. Fails the test unless it exits 0."""
    completed = subprocess.run(
        [node(), *args],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, (
        f"node exited {completed.returncode}\nstderr:\n{completed.stderr}\n"
        f"stdout:\n{completed.stdout}"
    )
    return completed.stdout


def received(printed: list[list[Any]]) -> list[dict[str, Any]]:
    return [args[1] for args in printed if args and args[0] == "Received:"]


@pytest.mark.parametrize(
    ("scenario", "opened"),
    [
        ("standard", "Connection established"),
        ("secure", "Authenticated connection established"),
    ],
)
def test_seed_example_chats_in_its_room(server: ServerThread, scenario: str, opened: str) -> None:
    text = f"Has anyone reviewed the latest design update? {uuid.uuid4().hex}"
    printed = run_example(server, scenario, text)

    assert [opened] in printed, printed
    messages = received(printed)
    welcome = messages[0]
    assert welcome["status"] == "success"
    assert welcome["code"] == "system"
    assert welcome["data"]["message"] == WELCOME_MESSAGE
    assert welcome["data"]["details"]["user_id"] == SEED_USER

    answers = [m for m in messages if m["code"] == "chat_response"]
    assert len(answers) == 1, messages
    answer = answers[0]
    assert answer["status"] == "success"
    assert answer["user_id"] == SEED_USER
    assert answer["room_id"] == SEED_ROOM
    assert answer["data"] == {"message": text, "sender": SEED_USER}
    assert isinstance(answer["event_id"], int) and answer["event_id"] > 0
    assert not [m for m in messages if m["status"] == "error"], messages


def test_seed_socketio_example_chats_in_its_room(server: ServerThread) -> None:
    """tests/js/seed_socketio.js: the seed's Socket.IO client example, unchanged, at path /ws."""
    text = f"Has anyone reviewed the latest design update? {uuid.uuid4().hex}"
    env = {
        **os.environ,
        "PRODUCTFLO_TEST_ORIGIN": server.http,
        "PRODUCTFLO_TEST_TOKEN": mint(server.settings, SEED_USER),
        "PRODUCTFLO_TEST_TIMEOUT_MS": "10000",
    }
    output = run_node([str(JS / "seed_socketio.js"), text], env)
    printed = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert ["Connected to Socket.IO"] in printed, printed
    messages = [args[1]["data"] for args in printed if args and args[0] == "Message received:"]
    welcome = messages[0]
    assert welcome["code"] == "system"
    assert welcome["data"]["message"] == WELCOME_MESSAGE
    assert welcome["data"]["details"]["user_id"] == SEED_USER
    assert welcome["data"]["details"]["authenticated"] is True
    answers = [m for m in messages if m["code"] == "chat_response"]
    assert len(answers) == 1, messages
    assert answers[0]["room_id"] == SEED_ROOM
    assert answers[0]["data"] == {"message": text, "sender": SEED_USER}
    assert not [m for m in messages if m["status"] == "error"], messages


def test_seed_ai_examples_are_answered_through_the_seeds_own_handler(server: ServerThread) -> None:
    """tests/js/seed_ai.js: the seed's haitch_chat and documentation requests, and its event
    handling switch, unchanged: each answer reaches the handler the seed wrote for its code."""
    env = {**os.environ, "PRODUCTFLO_TEST_ORIGIN": server.ws, "PRODUCTFLO_TEST_TIMEOUT_MS": "15000"}
    printed = [json.loads(line) for line in run_node([str(JS / "seed_ai.js")], env).splitlines()]
    calls: dict[str, list[dict[str, Any]]] = {}
    for name, *args in printed:
        calls.setdefault(name, []).append(args[0] if args else None)

    [chat] = calls["displayChatMessage"]
    assert chat["status"] == "success" and chat["data"]["sender"] == "haitch"
    asked = "What materials would be best for a waterproof enclosure?"
    assert chat["data"]["in_reply_to"]["message"] == asked
    [document] = calls["handleDocumentGeneration"]
    assert document["data"]["document"]["format"] == "markdown"
    assert document["data"]["document"]["content"].startswith("# ")
    assert "requirements.pdf" in document["data"]["document"]["content"]
    [ready] = calls["showNotification"]
    assert ready["data"]["details"]["title"] == document["data"]["document"]["title"]
    unhandled = {m["code"] for m in calls["Unhandled message type:"]}
    assert unhandled == {"haitch_chat", "documentation", "logs"}, "acks and progress, not answers"
