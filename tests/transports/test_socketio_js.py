"""Socket.IO at /ws with the official JavaScript client, socket.io-client, in Node.

`tests/js/socketio_scenarios.js` runs one scenario against a real server and prints what it
observed as one JSON line: the server's `message` payloads as the client received them
(`{"data": envelope}`), the arguments of acknowledgement callbacks, the client's own state. The
assertions are here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from productflo.auth import mint
from productflo.envelopes import WELCOME_MESSAGE
from tests.conftest import ServerThread
from tests.test_seed_js import JS, run_node

SCRIPT = JS / "socketio_scenarios.js"
NODE_TIMEOUT = 30.0
ROOM = "js-room"


def run_scenario(server: ServerThread, scenario: str, **args: str) -> dict[str, Any]:
    """Run one scenario of socketio_scenarios.js to completion; what it observed."""
    command = [str(SCRIPT), scenario, server.http]
    command += [f"{name}={value}" for name, value in args.items()]
    output = run_node(command)
    lines = output.splitlines()
    assert len(lines) == 1, output
    result: dict[str, Any] = json.loads(lines[0])
    return result


def envelope(payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope in a `message` payload, where the seed's client reads it."""
    assert set(payload) == {"data"}, payload
    data: dict[str, Any] = payload["data"]
    return data


def assert_welcome(payload: dict[str, Any], user: str, *, authenticated: bool) -> None:
    welcome = envelope(payload)
    assert welcome["status"] == "success" and welcome["code"] == "system", welcome
    assert welcome["data"]["message"] == WELCOME_MESSAGE
    assert welcome["data"]["details"]["user_id"] == user
    assert welcome["data"]["details"]["authenticated"] is authenticated


@pytest.mark.parametrize(
    ("transport", "ack"), [("websocket", "emitWithAck"), ("polling", "callback")]
)
def test_each_transport_welcomes_and_acknowledges_a_chat(
    server: ServerThread, transport: str, ack: str
) -> None:
    """The welcome first; the ack callback gets the chat_response, which also comes as a message."""
    result = run_scenario(
        server, "transports", transport=transport, ack=ack, user="js-user", room=ROOM
    )

    assert result["transport"] == transport and result["connected"] is True
    assert result["first"] == result["welcome"], "the welcome is the first message"
    assert_welcome(result["welcome"], "js-user", authenticated=False)

    answer = result["answer"]
    assert isinstance(answer, dict), f"the callback got {answer!r}"
    assert answer["status"] == "success" and answer["code"] == "chat_response", answer
    assert answer["client_msg_id"] == result["chat"]["client_msg_id"]
    assert answer["user_id"] == "js-user" and answer["room_id"] == ROOM
    assert answer["data"] == result["chat"]["data"]
    assert isinstance(answer["event_id"], int) and answer["event_id"] > 0
    if ack == "callback":
        assert result["answer_args_count"] == 1, "the callback gets the envelope alone"
    assert envelope(result["delivered"]) == answer, "the same envelope as a message event"
    assert result["disconnects"] == []


def test_socketio_and_native_clients_chat_both_ways(server: ServerThread) -> None:
    """A page on socket.io-client and a native WebSocket client see the same events."""
    result = run_scenario(
        server, "cross", sio_user="sio-user", native_user="native-user", room=ROOM
    )

    assert result["upgrades"] == ["websocket"], "the default: polling, then the upgrade"
    assert result["transport"] == "websocket"
    assert_welcome(result["welcome"], "sio-user", authenticated=False)
    sio_answer, native_heard = result["sio_answer"], result["native_heard"]
    assert sio_answer["code"] == "chat_response" and sio_answer["client_msg_id"] == "sio-1"
    assert native_heard["user_id"] == "sio-user" and native_heard["room_id"] == ROOM
    assert native_heard["event_id"] == sio_answer["event_id"]
    assert native_heard["data"] == sio_answer["data"]

    native_own, sio_heard = result["native_own"], envelope(result["sio_heard"])
    assert sio_heard["user_id"] == "native-user" and sio_heard["room_id"] == ROOM
    assert sio_heard["event_id"] == native_own["event_id"]
    assert sio_heard["data"] == native_own["data"]
    assert native_own["event_id"] > sio_answer["event_id"]
    assert result["disconnects"] == []


def test_reconnecting_with_last_event_id_replays_what_was_missed(server: ServerThread) -> None:
    """Reconnect with auth {last_event_id, log_id}: welcome, the missed chats, replay_complete."""
    result = run_scenario(server, "resume", user="resumer", talker="talker", room=ROOM)

    joined = envelope(result["joined"])
    assert result["position"] == {
        "last_event_id": joined["event_id"],
        "log_id": envelope(result["welcome"])["data"]["details"]["log_id"],
    }
    resumed = [envelope(payload) for payload in result["resumed"]]
    assert len(resumed) == 4, resumed
    welcome, first, second, end = resumed
    assert_welcome(result["resumed"][0], "resumer", authenticated=False)
    assert welcome["data"]["details"]["rooms"] == [ROOM]
    sent = result["sent"]
    assert [first, second] == sent, "the missed chats, in order, as the talker's own copies"
    assert [m["data"]["message"] for m in sent] == ["missed 1", "missed 2"]
    assert end["code"] == "system" and end["status"] == "success"
    assert end["data"]["details"]["replay_complete"] is True
    assert end["data"]["details"]["replayed"] == 2
    assert end["data"]["details"]["last_event_id"] == second["event_id"]
    assert "event_id" not in end


def test_a_bad_token_is_refused_and_a_good_one_is_the_identity(server: ServerThread) -> None:
    """connect_error "Authentication failed", not retried; a minted token connects as its sub."""
    token = mint(server.settings, "js-user")
    result = run_scenario(server, "bad_token", token=token, user="js-user")

    refused = result["refused"]
    assert refused["message"] == "Authentication failed"
    assert refused["connected"] is False
    assert refused["active"] is False, "denied by the server, not a network error to retry"
    assert refused["events"] == [["connect_error", "Authentication failed"]], "no retry, no message"

    accepted = result["accepted"]
    assert accepted["connected"] is True
    assert_welcome(accepted["welcome"], "js-user", authenticated=True)


def test_callbacks_get_the_error_or_nothing(server: ServerThread) -> None:
    """An unsupported code's callback gets the error envelope; typing's gets no argument."""
    result = run_scenario(server, "errors", user="js-user", room=ROOM)

    assert result["unsupported_args_count"] == 1, f"callback args: {result['unsupported_args']}"
    error = result["unsupported_args"][0]
    assert error["status"] == "error" and error["code"] == "system", error
    assert error["data"]["details"]["error_code"] == "UNSUPPORTED_MESSAGE_TYPE"
    assert error["client_msg_id"] == "bad-1"
    assert result["typing_args_count"] == 0, result["typing_args"]
