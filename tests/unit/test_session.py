"""The protocol rules of one connection (productflo.session), on an in-memory log and socket.

The same rules are shown end to end, over real sockets and PostgreSQL, in tests/transports/; these
take milliseconds, so that a broken rule is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import pytest

from productflo import replay
from productflo.envelopes import WELCOME_MESSAGE
from productflo.errors import CloseCode
from productflo.events.models import JsonObject
from productflo.session import Resume, State
from tests.unit.conftest import Start
from tests.unit.memory import (
    Closed,
    MemoryLog,
    acknowledges,
    appended,
    chat,
    error_code,
    membership,
    said,
)

pytestmark = pytest.mark.anyio


def event_ids(envelopes: Sequence[object]) -> list[int]:
    return [e["event_id"] for e in envelopes if isinstance(e, dict) and "event_id" in e]


def chat_but(**changes: object) -> str:
    """A chat frame (client_msg_id `b1`) with some fields changed."""
    return json.dumps({**chat("r", "hi", "b1"), **changes})


def said_texts(envelopes: Sequence[object]) -> list[str]:
    """The texts of the chats among `envelopes`, in order."""
    return [
        e["data"]["message"]
        for e in envelopes
        if isinstance(e, dict) and e.get("code") == "chat_response"
    ]


def completes_replay(envelope: JsonObject) -> bool:
    return "replay_complete" in envelope["data"].get("details", {})


async def test_the_welcome_comes_first_and_says_where_the_log_stands(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended("alice", "r", "join"), said("bob", "r", "hi")])
    process = await start()
    alice = await process.connect("alice")
    assert alice.transport.sent == [alice.welcome]
    assert alice.welcome["data"]["message"] == WELCOME_MESSAGE
    details = alice.welcome["data"]["details"]
    assert details["user_id"] == "alice"
    assert details["log_id"] == str(log.log_id)
    assert details["last_event_id"] == 2
    assert details["rooms"] == ["r"]


async def test_a_chat_is_acknowledged_once_committed_and_reaches_its_sender_once(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice")
    log.hold_commits()
    await alice.send(chat("r", "hello", "m1"))
    await alice.send("not json")  # answered at once, whatever waits for the log
    refusal = await alice.transport.next()
    assert error_code(refusal) == "INVALID_JSON"
    assert alice.answers == [refusal]  # nothing answers the chat while it is not in the log
    log.release_commits()
    joined, ack = await alice.transport.next(), await alice.transport.next()
    assert membership(joined) == "join"  # sending to a room joins it
    assert acknowledges("m1")(ack) and ack["status"] == "success"
    assert ack["data"] == {"message": "hello"} and ack["event_id"] == 2
    assert alice.answers == [refusal, ack]
    await alice.send(chat("r", "again", "m2"))
    await alice.transport.until(acknowledges("m2"))
    # 3 is the refused frame, kept for audit and never delivered.
    assert event_ids(alice.transport.sent) == [1, 2, 4]
    assert [e.type for e in log.events] == ["join", "chat", "rejected", "chat"]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("not json", "INVALID_JSON"),
        ("[1, 2]", "INVALID_JSON"),
        (chat_but(code=None), "MESSAGE_CODE_REQUIRED"),
        (chat_but(code="chat_response"), "UNSUPPORTED_MESSAGE_TYPE"),
        (chat_but(room_id=None), "ROOM_ID_REQUIRED"),
        (chat_but(data={"message": 5}), "INVALID_MESSAGE"),
        (chat_but(user_id="mallory"), "USER_ID_MISMATCH"),
    ],
    ids=["not-json", "not-an-object", "no-code", "server-code", "no-room", "bad-field", "not-me"],
)
async def test_a_bad_frame_gets_its_error_code_and_nothing_reaches_the_room(
    log: MemoryLog, start: Start, frame: str, expected: str
) -> None:
    process = await start()
    alice = await process.connect("alice")
    await alice.send(frame)
    refusal = await alice.transport.next()
    assert error_code(refusal) == expected
    assert refusal["code"] == "system" and refusal["user_id"] == "alice"
    assert refusal.get("client_msg_id") == ("b1" if "b1" in frame else None)
    assert alice.answers == [refusal]
    await alice.send(chat("r", "still here", "ok"))  # the connection keeps answering
    await alice.transport.until(acknowledges("ok"))
    rejected, *rest = log.events
    assert rejected.stream == "user:alice" and rejected.type == "rejected"
    assert rejected.data["error_code"] == expected and rejected.data["frame"] == frame
    assert [(e.stream, e.type) for e in rest] == [("room:r", "join"), ("room:r", "chat")]


async def test_a_resent_client_msg_id_is_answered_with_the_original_and_not_appended(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice")
    await alice.send(chat("r", "hello", "m1"))
    original = (await alice.transport.until(acknowledges("m1")))[-1]
    await alice.send(chat("r", "hello, edited", "m1"))
    again = await alice.transport.next()
    assert again["event_id"] == original["event_id"] and again["data"] == {"message": "hello"}
    assert alice.answers[-1] is not None and alice.answers[-1]["event_id"] == original["event_id"]
    # After a reconnect, too: the key is the user's, not the connection's.
    back = await process.connect("alice")
    await back.send(chat("r", "hello", "m1"))
    assert (await back.transport.next())["event_id"] == original["event_id"]
    assert [e.data for e in log.of_type("chat")] == [{"message": "hello"}]


async def test_messages_sent_without_waiting_are_logged_and_acknowledged_in_order(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice")
    for i in range(20):
        await alice.send(chat("r", f"message {i}", f"m{i}"))
    received = await alice.transport.until(acknowledges("m19"))
    acks = [e["client_msg_id"] for e in received if e["code"] == "chat_response"]
    assert acks == [f"m{i}" for i in range(20)]
    assert [e.data["message"] for e in log.of_type("chat")] == [f"message {i}" for i in range(20)]


async def test_a_chat_right_after_a_leave_joins_the_room_again(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended("alice", "r", "join")])
    process = await start()
    alice = await process.connect("alice")
    await alice.send({"code": "leave", "room_id": "r"})
    await alice.send(chat("r", "I'm back", "m1"))  # before the leave is even committed
    received = await alice.transport.until(acknowledges("m1"))
    assert [membership(e) for e in received] == ["leave", "join", None]
    assert [e.type for e in log.events] == ["join", "leave", "join", "chat"]


async def test_a_message_the_log_cannot_take_is_refused_and_delivered_to_no_one(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended("alice", "r", "join"), appended("bob", "r", "join")])
    process = await start()
    alice, bob = await process.connect("alice"), await process.connect("bob")
    log.unavailable = True
    await alice.send(chat("r", "lost?", "m1"))
    refusal = await alice.transport.next()
    assert error_code(refusal) == "FAILED_TO_PROCESS_MESSAGE"
    assert refusal["client_msg_id"] == "m1"
    log.unavailable = False
    await alice.send(chat("r", "lost?", "m1"))  # the client tries again, as told
    ack = (await alice.transport.until(acknowledges("m1")))[-1]
    assert ack["event_id"] == 3
    assert await bob.transport.next() == ack  # bob's first envelope since the welcome
    assert len(log.of_type("chat")) == 1


async def test_a_client_that_stops_reading_is_closed_1013_and_others_do_not_wait(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended("alice", "r", "join"), appended("bob", "r", "join")])
    process = await start(outbound_queue_size=4)
    alice, bob = await process.connect("alice"), await process.connect("bob")
    alice.transport.stall()
    for i in range(10):
        await bob.send(chat("r", f"message {i}", f"m{i}"))
        await bob.transport.until(acknowledges(f"m{i}"))  # bob is never held up by alice
    assert alice.session.state is State.CLOSING
    alice.transport.resume_reading()
    rest = await alice.transport.rest_until_closed()
    # What the writer had in hand goes out; what was queued behind it is dropped.
    assert event_ids(rest) == [3]
    assert rest[-1] == Closed(CloseCode.TRY_AGAIN_LATER, "too slow; resume with last_event_id")
    assert len(log.of_type("chat")) == 10  # all in the log, for alice to resume from


async def test_a_close_waits_for_the_acknowledgements_of_what_was_accepted(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice")
    log.hold_commits()
    await alice.send(chat("r", "before the restart", "m1"))
    alice.session.request_close(CloseCode.SERVICE_RESTART, "server restarting")
    await alice.send(chat("r", "after it", "m2"))  # not taken: the session is closing
    log.release_commits()
    rest = await alice.transport.rest_until_closed()
    assert isinstance(rest[0], dict) and membership(rest[0]) == "join"
    assert isinstance(rest[1], dict) and acknowledges("m1")(rest[1])
    assert rest[2:] == [Closed(CloseCode.SERVICE_RESTART, "server restarting")]
    assert [e.data["message"] for e in log.of_type("chat")] == ["before the restart"]


async def test_a_flood_is_told_rate_limited_then_closed_1008_after_its_acknowledgements(
    log: MemoryLog, start: Start
) -> None:
    process = await start(rate_limit=1)  # bursts of 2; 10 refusals, then it is abuse
    alice = await process.connect("alice")
    for i in range(14):
        await alice.send(chat("r", f"message {i}", f"m{i}"))
    rest = await alice.transport.rest_until_closed()
    told = [(error_code(e), e.get("client_msg_id")) for e in rest if isinstance(e, dict)]
    limited = [i for code, i in told[:-1] if code == "RATE_LIMITED"]
    acked = [i for code, i in told[:-1] if code is None]  # the join, the two chats
    assert limited == [f"m{i}" for i in range(2, 12)]
    assert acked == [None, "m0", "m1"]
    assert told[-1] == ("RATE_LIMITED", "m12")  # the last word; m13 is not taken any more
    assert rest[-1] == Closed(CloseCode.POLICY_VIOLATION, "rate limit persistently exceeded")
    assert [e.type for e in log.events] == ["join", "chat", "chat"]  # refusals only counted


async def test_an_expired_token_is_told_authentication_failed_then_closed_4401(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice", authenticated=True, expires_at=0)
    rest = await alice.transport.rest_until_closed()
    assert [error_code(e) for e in rest if isinstance(e, dict)] == ["AUTHENTICATION_FAILED"]
    assert rest[-1] == Closed(CloseCode.AUTHENTICATION_FAILED, "token expired")


async def replay_window(log: MemoryLog) -> None:
    """Alice saw up to 2; then 3 and 6 in her room, 4 and 5 in a room of others."""
    await log.append([appended("alice", "r", "join"), appended("bob", "r", "join")])
    await log.append([said("bob", "r", "while you were away")])
    await log.append([appended("carol", "s", "join"), said("carol", "s", "not for alice")])
    await log.append([said("bob", "r", "still away?")])


async def test_a_resuming_client_gets_what_it_missed_once_in_order_then_live_events(
    log: MemoryLog, start: Start
) -> None:
    await replay_window(log)
    process = await start()
    log.hold_position_reads()
    alice = await process.connect("alice", resume=Resume(2))
    assert alice.welcome["data"]["details"]["last_event_id"] == 6
    await log.append([said("bob", "r", "live")])
    await process.hub.dispatched_past(7)  # handed to alice's session while its replay waits
    log.release_position_reads()
    received = await alice.transport.until(lambda e: e.get("event_id") == 7)
    assert event_ids(received) == [3, 6, 7]
    complete = received[2]["data"]["details"]
    assert complete == {
        "replay_complete": True,
        "last_event_id": 6,
        "replayed": 2,
        "truncated": False,
    }


async def test_a_replay_of_several_chunks_comes_whole_in_order_while_live_events_wait(
    log: MemoryLog, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 4, each read while the one before is sent: 23 missed chats (six chunks, the
    last short) arrive once and in order, then replay_complete, then what came live meanwhile."""
    monkeypatch.setattr(replay, "CHUNK", 4)
    await log.append([appended("alice", "r", "join")])
    await log.append([said("bob", "r", f"m{n}") for n in range(23)])
    process = await start()
    alice = await process.connect("alice", resume=Resume(1))
    await log.append([said("bob", "r", "live")])
    received = await alice.transport.until(lambda e: e.get("event_id") == 25)
    assert event_ids(received) == [*range(2, 25), 25]
    assert completes_replay(received[-2]) and received[-2]["data"]["details"]["replayed"] == 23
    assert said_texts(received) == [*(f"m{n}" for n in range(23)), "live"]


async def test_a_replay_that_stops_early_leaves_no_read_behind(
    log: MemoryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller takes one chunk and goes: the read of the next, under way, is cancelled."""
    monkeypatch.setattr(replay, "CHUNK", 2)
    await log.append([said("bob", "r", f"m{n}") for n in range(6)])
    before = asyncio.all_tasks()
    async with contextlib.aclosing(replay.chunks_at(log.as_store(), [1, 2, 3, 4, 5, 6])) as chunks:
        async for chunk in chunks:
            assert [event.position for event in chunk] == [1, 2]
            assert len(asyncio.all_tasks() - before) == 1, "the next chunk is being read"
            break
    assert asyncio.all_tasks() - before == set()


async def test_a_replay_over_the_limit_keeps_the_newest_and_says_truncated(
    log: MemoryLog, start: Start
) -> None:
    await replay_window(log)
    process = await start(replay_limit=1)
    alice = await process.connect("alice", resume=Resume(2))
    received = await alice.transport.until(completes_replay)
    assert event_ids(received) == [6]
    assert received[-1]["data"]["details"]["truncated"] is True


async def test_a_resume_from_another_log_is_told_to_start_over(
    log: MemoryLog, start: Start
) -> None:
    await replay_window(log)
    process = await start()
    alice = await process.connect("alice", resume=Resume(2, log_id="a-log-since-recreated"))
    complete = (await alice.transport.next())["data"]["details"]
    assert complete["reset"] is True and complete["log_id"] == str(log.log_id)
    assert complete["last_event_id"] == 6
