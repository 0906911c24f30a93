"""Reconnecting with `last_event_id` and `log_id`: the missed events, replay_complete, then live.

Real servers, real WebSocket clients. The contract (SPEC, "Connection lifecycle"): after the
welcome, every event after `last_event_id` that the user would have received, oldest first, each
exactly once; then a `system` envelope with `data.details.replay_complete: true`; then live
events, with no gap and no duplicate at the seam.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from productflo.auth import mint
from tests.client import Client
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio

Message = dict[str, Any]


# -- helpers --------------------------------------------------------------------------------------


def details(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = message.get("data", {}).get("details") or {}
    return found


def is_complete(message: Message) -> bool:
    return message["code"] == "system" and details(message).get("replay_complete") is True


def is_own(client: Client, code: str = "chat_response") -> Any:
    return lambda m: m["code"] == code and m["user_id"] == client.user_id


async def replay_of(client: Client) -> tuple[list[Message], Message]:
    """Everything up to replay_complete (which must come), and replay_complete itself."""
    replayed: list[Message] = []
    while True:
        message = await client.recv()
        if is_complete(message):
            return replayed, message
        replayed.append(message)


async def send_chats(sender: Client, room: str, lines: list[str]) -> list[Message]:
    """Send, then wait for every acknowledgement (the sender's own copies), in order."""
    for line in lines:
        await sender.chat(room, line, client_msg_id=f"{sender.user_id}-{line}")
    return [await sender.recv_until(is_own(sender)) for _ in lines]


async def leave(client: Client, room: str) -> Message:
    await client.send({"code": "leave", "room_id": room})
    return await client.recv_until(
        lambda m: (
            m["code"] == "system"
            and m["room_id"] == room
            and details(m).get("action") == "leave"
            and m["user_id"] == client.user_id
        )
    )


def texts(messages: list[Message]) -> list[str]:
    return [m["data"].get("message") for m in messages]


async def rows(server: ServerThread, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(server.database.dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def away(connect: Any, user: str, rooms: list[str]) -> int:
    """Connect `user`, join `rooms`, disconnect; the highest event id seen (its last join)."""
    client = await connect(f"/ws?user_id={user}")
    last = 0
    for room in rooms:
        last = (await client.join(room))["event_id"]
    await client.close()
    return last


# -- 1. the missed messages, then replay_complete, then live --------------------------------------


async def test_a_resume_gets_exactly_what_it_missed_then_replay_complete_then_live(
    connect: Any,
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    last_seen = await away(connect, "bob", ["r"])
    missed = await send_chats(alice, "r", [f"missed-{n}" for n in range(5)])

    bob = await connect(f"/ws?user_id=bob&last_event_id={last_seen}")
    assert "replay_complete" not in details(bob.welcome), "the welcome comes first, on its own"
    replayed, complete = await replay_of(bob)

    assert replayed == missed, "exactly the 5 missed messages, oldest first, as sent live"
    assert [m["event_id"] for m in replayed] == sorted(m["event_id"] for m in missed)
    assert complete["status"] == "success"
    assert complete["user_id"] == "bob"
    assert details(complete)["replayed"] == 5
    assert details(complete)["truncated"] is False
    assert "reset" not in details(complete)
    assert isinstance(details(complete)["last_event_id"], int)
    assert details(complete)["last_event_id"] >= missed[-1]["event_id"]

    await alice.chat("r", "live")
    live = await bob.recv()
    assert live["code"] == "chat_response" and live["data"]["message"] == "live"
    assert live["event_id"] > details(complete)["last_event_id"]
    assert await bob.nothing_within(0.5), "nothing replayed twice, nothing after the live one"


async def test_the_welcomes_last_event_id_is_a_resume_point_for_a_fresh_connection(
    connect: Any,
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    await away(connect, "bob", ["r"])
    bob = await connect("/ws?user_id=bob")  # not resuming: only what comes from now on
    position = details(bob.welcome)["last_event_id"]
    await bob.close()
    missed = await send_chats(alice, "r", ["after the welcome"])

    bob = await connect(f"/ws?user_id=bob&last_event_id={position}")
    replayed, _ = await replay_of(bob)
    assert replayed == missed


async def test_what_a_resuming_client_sends_is_answered_after_replay_complete(
    connect: Any,
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    last_seen = await away(connect, "bob", ["r"])
    missed = await send_chats(alice, "r", ["one", "two"])

    bob = await connect(f"/ws?user_id=bob&last_event_id={last_seen}")
    await bob.chat("r", "back", client_msg_id="back-1")  # before reading anything
    replayed, complete = await replay_of(bob)
    assert replayed == missed
    ack = await bob.recv()
    assert ack["code"] == "chat_response" and ack["client_msg_id"] == "back-1"
    assert ack["event_id"] > details(complete)["last_event_id"]


# -- 2. the seam, under load ----------------------------------------------------------------------


async def _resume_during_a_burst(server: ServerThread, run: int) -> tuple[int, int]:
    """A sends 300 chats; B resumes while they pour in. Returns (replayed, live) counts."""
    room, a_id, b_id = f"burst-{run}", f"a{run}", f"b{run}"
    a = await Client.open(f"{server.ws}/ws?user_id={a_id}")
    b = await Client.open(f"{server.ws}/ws?user_id={b_id}")
    clients = [a, b]
    try:
        await a.join(room)
        await b.join(room)
        await a.chat(room, "before")
        last_seen = (await b.recv_code("chat_response"))["event_id"]
        await a.recv_until(is_own(a))
        await b.close()

        total, resume_at = 300, 100
        hundred_sent = asyncio.Event()
        # Where the seam falls is up to the machine; that it falls inside the burst is not: B
        # resumes once the first is acknowledged (so it is replayed), and the last is sent once
        # B has its replay_complete (so it is live).
        first_acknowledged = asyncio.Event()
        replay_completed = asyncio.Event()

        async def send() -> None:
            for n in range(total):  # pipelined: no waiting for acknowledgements
                if n == total - 1:
                    await replay_completed.wait()
                await a.chat(room, f"m{n}")
                if n + 1 == resume_at:
                    hundred_sent.set()
                if n % 10 == 9:
                    await asyncio.sleep(0.002)  # spread the burst over the resume

        async def acknowledged() -> list[int]:
            acks: list[Message] = []
            for _ in range(total):
                acks.append(await a.recv_until(is_own(a)))
                first_acknowledged.set()
            assert texts(acks) == [f"m{n}" for n in range(total)]
            return [ack["event_id"] for ack in acks]

        async def resume() -> list[Message]:
            await hundred_sent.wait()
            await first_acknowledged.wait()
            again = await Client.open(f"{server.ws}/ws?user_id={b_id}&last_event_id={last_seen}")
            clients.append(again)
            received: list[Message] = []
            chats = 0
            complete = False
            while chats < total or not complete:
                message = await again.recv()
                received.append(message)
                chats += message["code"] == "chat_response"
                complete = complete or is_complete(message)
                if complete:
                    replay_completed.set()
            assert await again.nothing_within(0.3), "nothing after the last one: no duplicates"
            return received

        _, ids, received = await asyncio.gather(send(), acknowledged(), resume())
    finally:
        for client in clients:
            await client.close()

    completes = [n for n, m in enumerate(received) if is_complete(m)]
    assert len(completes) == 1, "exactly one replay_complete"
    seam = completes[0]
    before, after = received[:seam], received[seam + 1 :]
    got = [m["event_id"] for m in before + after]
    assert got == sorted(set(got)), "strictly increasing: no duplicate, no reordering"
    assert got == ids, "every acknowledged event after last_event_id, exactly once"
    assert all(i > last_seen for i in got)
    boundary = details(received[seam])["last_event_id"]
    assert all(m["event_id"] <= boundary for m in before), "replayed: up to last_event_id"
    assert all(m["event_id"] > boundary for m in after), "live: after last_event_id"
    assert details(received[seam])["replayed"] == len(before)
    return len(before), len(after)


async def test_a_resume_during_a_burst_of_300_has_no_gap_and_no_duplicate_at_the_seam(
    start_server: Any,
) -> None:
    server = start_server(rate_limit=10000)
    splits = [await _resume_during_a_burst(server, run) for run in range(3)]
    assert all(replayed + live == 300 for replayed, live in splits), splits
    assert all(0 < replayed < 300 for replayed, _ in splits), f"not mid-burst: {splits}"


# -- 3. truncation --------------------------------------------------------------------------------


async def test_over_the_replay_limit_only_the_newest_are_replayed_and_history_has_the_rest(
    start_server: Any,
) -> None:
    server = start_server(replay_limit=10)
    alice = await Client.open(f"{server.ws}/ws?user_id=alice")
    bob = await Client.open(f"{server.ws}/ws?user_id=bob")
    try:
        await alice.join("r")
        last_seen = (await bob.join("r"))["event_id"]
        await bob.close()
        missed = await send_chats(alice, "r", [f"m{n:02}" for n in range(25)])

        bob = await Client.open(f"{server.ws}/ws?user_id=bob&last_event_id={last_seen}")
        replayed, complete = await replay_of(bob)
        assert replayed == missed[-10:], "the newest 10, oldest first"
        assert details(complete)["truncated"] is True
        assert details(complete)["replayed"] == 10
        assert details(complete)["last_event_id"] >= missed[-1]["event_id"]

        first = replayed[0]["event_id"]
        await bob.send({"code": "history", "room_id": "r", "data": {"before": first, "limit": 15}})
        page = (await bob.recv_code("history"))["data"]
        assert page["events"] == missed[:15], "the 15 that were not replayed, oldest first"
        assert page["has_more"] is True, "the joins are older still"

        await bob.send({"code": "history", "room_id": "r", "data": {"before": first}})
        page = (await bob.recv_code("history"))["data"]
        assert [m["code"] for m in page["events"][:2]] == ["system", "system"]  # the joins
        assert page["events"][2:] == missed[:15]
        assert page["has_more"] is False
    finally:
        await alice.close()
        await bob.close()


async def test_at_the_replay_limit_exactly_nothing_is_truncated(start_server: Any) -> None:
    server = start_server(replay_limit=10)
    alice = await Client.open(f"{server.ws}/ws?user_id=alice")
    bob = await Client.open(f"{server.ws}/ws?user_id=bob")
    try:
        await alice.join("r")
        last_seen = (await bob.join("r"))["event_id"]
        await bob.close()
        missed = await send_chats(alice, "r", [f"m{n}" for n in range(10)])
        bob = await Client.open(f"{server.ws}/ws?user_id=bob&last_event_id={last_seen}")
        replayed, complete = await replay_of(bob)
        assert replayed == missed
        assert details(complete)["truncated"] is False
    finally:
        await alice.close()
        await bob.close()


# -- 4. membership along the window ---------------------------------------------------------------


async def test_the_replay_follows_membership_as_it_changed_while_away(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    for room in ("r1", "r2", "r3", "r4"):
        await alice.join(room)
    laptop = await connect("/ws?user_id=bob")  # bob's other device stays connected
    await laptop.join("r1")
    last_seen = (await laptop.join("r2"))["event_id"]
    # (bob's phone saw up to here, then lost its connection)

    [r2_before] = await send_chats(alice, "r2", ["r2 before the leave"])
    left = await leave(laptop, "r2")
    await send_chats(alice, "r2", ["r2 after the leave"])
    joined = await laptop.join("r3")
    [r1] = await send_chats(alice, "r1", ["r1"])
    [r3] = await send_chats(alice, "r3", ["r3"])
    await send_chats(alice, "r4", ["r4, never bob's"])

    phone = await connect(f"/ws?user_id=bob&last_event_id={last_seen}")
    assert details(phone.welcome)["rooms"] == ["r1", "r3"]
    replayed, complete = await replay_of(phone)
    assert replayed == [r2_before, left, joined, r1, r3]
    assert details(complete)["replayed"] == 5

    await send_chats(alice, "r2", ["r2 live"])
    [r3_live] = await send_chats(alice, "r3", ["r3 live"])
    assert await phone.recv() == r3_live
    assert await phone.nothing_within(0.3)


# -- 5. reset -------------------------------------------------------------------------------------


async def test_a_position_beyond_the_log_answers_reset_and_replays_nothing(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    await send_chats(alice, "r", ["there is a log"])

    bob = await connect("/ws?user_id=bob&last_event_id=1000000")
    welcome = details(bob.welcome)
    reset = await bob.recv()
    assert is_complete(reset), "no replayed events before replay_complete"
    assert details(reset)["reset"] is True
    assert details(reset)["log_id"] == welcome["log_id"]
    assert details(reset)["last_event_id"] == welcome["last_event_id"]
    await bob.join("r")  # and live from here
    await alice.chat("r", "after the reset")
    assert (await bob.recv_code("chat_response"))["data"]["message"] == "after the reset"


async def test_the_head_of_the_log_itself_is_not_a_reset(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    [last] = await send_chats(alice, "r", ["newest"])
    bob = await connect(f"/ws?user_id=bob&last_event_id={last['event_id']}")
    complete = await bob.recv()
    assert is_complete(complete)
    assert "reset" not in details(complete)
    assert details(complete)["replayed"] == 0


async def test_another_logs_id_answers_reset_and_this_logs_id_resumes(connect: Any) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    last_seen = await away(connect, "bob", ["r"])
    missed = await send_chats(alice, "r", ["while away"])
    log_id = details(alice.welcome)["log_id"]
    uuid.UUID(log_id)

    other = uuid.uuid4()
    assert str(other) != log_id
    bob = await connect(f"/ws?user_id=bob&last_event_id={last_seen}&log_id={other}")
    reset = await bob.recv()
    assert is_complete(reset)
    assert details(reset)["reset"] is True
    assert details(reset)["log_id"] == log_id
    await bob.close()

    bob = await connect(f"/ws?user_id=bob&last_event_id={last_seen}&log_id={log_id}")
    replayed, complete = await replay_of(bob)
    assert replayed == missed
    assert "reset" not in details(complete)


# -- 6. an invalid last_event_id ------------------------------------------------------------------


@pytest.mark.parametrize("position", ["abc", "-1", "1.5", "true"])
async def test_an_invalid_last_event_id_is_an_error_and_the_connection_stays_usable(
    connect: Any, position: str
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("r")
    await away(connect, "bob", ["r"])
    await send_chats(alice, "r", ["missed, and not replayed"])

    bob = await connect(f"/ws?user_id=bob&last_event_id={position}")
    error = await bob.recv()
    assert error["status"] == "error" and error["code"] == "system"
    assert details(error)["error_code"] == "INVALID_MESSAGE"
    await bob.chat("r", "still usable")
    answer = await bob.recv()
    assert answer["code"] == "chat_response", "no replay, no replay_complete"
    assert answer["data"]["message"] == "still usable"


# -- 7. from the start ----------------------------------------------------------------------------


async def test_last_event_id_0_replays_everything_the_user_saw_and_nothing_else(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.join("elsewhere")  # never bob's
    bob = await connect("/ws?user_id=bob")
    live = [await bob.join("r")]
    await alice.join("r")
    await send_chats(alice, "r", ["hello bob"])
    await send_chats(alice, "elsewhere", ["not for bob"])
    await bob.send("this is not JSON")  # rejected: recorded in user:bob, never delivered
    await bob.send({"code": "idea", "room_id": "r", "data": {"message": "an idea"}})
    # The answer is committed when the assistant gets to it: wait for it, so that the replay
    # below cannot hold an answer committed after Bob stopped watching.
    while live[-1]["code"] != "idea_response":
        live.append(await bob.recv())
    await bob.chat("r", "last")
    while live[-1]["code"] != "chat_response" or live[-1]["user_id"] != "bob":
        live.append(await bob.recv())
    await bob.close()

    rejected = await rows(
        server, "SELECT position FROM events WHERE stream = 'user:bob' AND type = 'rejected'"
    )
    assert len(rejected) == 1, "the bad frame is in the log"
    unstored = [m["code"] for m in live if "event_id" not in m and m["code"] != "logs"]
    assert unstored == ["system"]  # INVALID_JSON (the answer's progress `logs` are not stored)

    bob = await connect("/ws?user_id=bob&last_event_id=0")
    replayed, complete = await replay_of(bob)
    assert replayed == [m for m in live if "event_id" in m], "what bob saw live, nothing more"
    assert [m["code"] for m in replayed] == [
        "system",  # bob's join
        "system",  # alice's join
        "chat_response",
        "idea",  # pending: addressed to bob
        "idea_response",
        "chat_response",
    ]
    assert rejected[0]["position"] not in [m["event_id"] for m in replayed]
    assert details(complete)["replayed"] == 6


# -- 8. /ws/secure --------------------------------------------------------------------------------


async def test_resume_on_the_secure_endpoint(connect: Any, server: ServerThread) -> None:
    def secure(user: str, query: str = "") -> str:
        return f"/ws/secure?access_token={mint(server.settings, user)}{query}"

    alice = await connect(secure("alice"))
    await alice.join("vault")
    bob = await connect(secure("bob"))
    last_seen = (await bob.join("vault"))["event_id"]
    await bob.close()
    missed = await send_chats(alice, "vault", ["a", "b", "c"])

    log_id = details(bob.welcome)["log_id"]
    bob = await connect(secure("bob", f"&last_event_id={last_seen}&log_id={log_id}"))
    assert details(bob.welcome)["authenticated"] is True
    replayed, complete = await replay_of(bob)
    assert replayed == missed
    assert details(complete)["replayed"] == 3
    await alice.chat("vault", "live")
    assert (await bob.recv())["data"]["message"] == "live"

    reset = await connect(secure("bob", "&last_event_id=999999"))
    assert details(await reset.recv())["reset"] is True
    invalid = await connect(secure("bob", "&last_event_id=abc"))
    assert details(await invalid.recv())["error_code"] == "INVALID_MESSAGE"


# -- several processes on one log -----------------------------------------------------------------


def hear_only_by_polling(server: ServerThread) -> None:
    """Make `server` learn of other processes' commits by its poll alone, as while its LISTEN
    connection is down, or a NOTIFY is late: its hub then lags the log by up to poll_interval."""
    hub = server.app_state.hub
    hub._task.get_loop().call_soon_threadsafe(hub._tailer.close)


async def test_a_position_another_process_delivered_is_resumed_not_reset(
    start_server: Any,
) -> None:
    """Processes sharing a log dispatch it a little apart: a client that saw event X through one
    and reconnects to another that has not dispatched X yet must be resumed, not told to reset."""
    first = start_server()
    second = start_server(poll_interval=1.0)
    hear_only_by_polling(second)
    alice = await Client.open(f"{first.ws}/ws?user_id=alice")
    bob = await Client.open(f"{first.ws}/ws?user_id=bob")
    clients = [alice, bob]
    try:
        await alice.join("r")
        await bob.join("r")
        await send_chats(alice, "r", ["seen through the first process"])
        seen = (await bob.recv_code("chat_response"))["event_id"]
        await bob.close()

        bob = await Client.open(f"{second.ws}/ws?user_id=bob&last_event_id={seen}")
        clients.append(bob)
        complete = await bob.recv()
        assert is_complete(complete)
        assert "reset" not in details(complete), "a real position of this log is not a reset"
        assert details(complete)["replayed"] == 0
        [after] = await send_chats(alice, "r", ["after"])
        assert await bob.recv() == after, "live from there on, without the one already seen"
    finally:
        for client in clients:
            await client.close()


# -- what a reconnecting client relies on ---------------------------------------------------------


async def test_every_answer_to_a_message_with_a_client_msg_id_carries_it_rate_limited_too(
    start_server: Any,
) -> None:
    """A client keeps what it sent until an answer names it (client_msg_id), and resends the rest
    after reconnecting: an answer that does not name its message leaves the client guessing."""
    # Bursts of 10 (the join takes one); 40 sent at once cannot all be admitted by tokens that
    # come back while a loaded server reads them (30 take 6 s), nor be refused often enough to
    # be abuse (50).
    server = start_server(rate_limit=5)
    alice = await Client.open(f"{server.ws}/ws?user_id=alice")
    try:
        await alice.join("r")
        sent = [f"c-{n}" for n in range(40)]
        for client_msg_id in sent:
            await alice.chat("r", client_msg_id, client_msg_id=client_msg_id)
        answers = [
            await alice.recv_until(lambda m: is_own(alice)(m) or m["status"] == "error")
            for _ in sent
        ]
    finally:
        await alice.close()
    refused = [a for a in answers if a["status"] == "error"]
    assert refused and {details(a)["error_code"] for a in refused} == {"RATE_LIMITED"}
    assert sorted(a.get("client_msg_id") or "" for a in answers) == sorted(sent)


# -- the client loop of docs/protocol.md ----------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NODE_MODULES = Path(__file__).resolve().parents[1] / "js" / "node_modules"

# Runs the documented connectProductFlo, as written, in Node, with the `ws` package standing in for
# the browser's WebSocket. Bob's network drops (1006) while Alice keeps talking and Bob writes;
# then a connection with a bad token must stop, not retry. Prints one JSON line of observations.
DOC_CLIENT_HARNESS = r"""
'use strict';
const fs = require('fs');
const NodeWebSocket = require('ws');
const [origin, docs] = process.argv.slice(2);
const opened = [];
global.WebSocket = class extends NodeWebSocket {
  constructor(url) { super(url); opened.push(this); }
};
const doc = fs.readFileSync(docs, 'utf8');
const block = doc.split('A client that does all of this')[1].split('```js\n')[1].split('\n```')[0];
const connectProductFlo = new Function(`${block}\nreturn connectProductFlo;`)();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(check, what) {
  for (const end = Date.now() + 10000; !check(); await sleep(10)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
  }
}
function client(url) {
  const seen = {events: [], stops: [], resets: []};
  seen.api = connectProductFlo(url, {
    onEvent: (message) => seen.events.push(message),
    onReset: (rooms) => seen.resets.push(rooms),
    onTruncated: () => {},
    onStop: (code) => seen.stops.push(code),
  });
  seen.chats = () => seen.events.filter((m) => m.code === 'chat_response');
  seen.said = (text) => seen.chats().some((m) => m.data.message === text);
  return seen;
}
const say = (who, message) => who.api.send({code: 'chat', room_id: 'r', data: {message}});

(async () => {
  const bob = client(`${origin}/ws?user_id=bob`);
  const alice = client(`${origin}/ws?user_id=alice`);
  bob.api.send({code: 'join', room_id: 'r'});
  const joined = (m) => m.code === 'system' && m.user_id === 'bob' && m.event_id !== undefined;
  await until(() => bob.events.some(joined), 'the join');
  say(alice, 'one');
  await until(() => bob.said('one'), 'one');

  const bobs = () => opened.filter((socket) => socket.url.includes('user_id=bob'));
  bobs()[0].terminate();  // the network drops: close 1006
  await sleep(20);
  say(bob, 'written while away');
  say(alice, 'two');
  say(alice, 'three');
  await until(() => alice.said('three'), 'three stored');
  await until(() => bob.said('written while away') && bob.said('three'), 'the resume');
  say(alice, 'four');
  await until(() => bob.said('four'), 'four');
  await sleep(300);

  const refused = client(`${origin}/ws/secure?access_token=not-a-token`);
  await until(() => refused.stops.length > 0, 'the stop');
  await sleep(1000);  // longer than the first backoff: it would have retried by now
  console.log(JSON.stringify({
    bob: bob.chats().map((m) => [m.event_id, m.data.message]),
    urls: bobs().map((socket) => socket.url),
    stops: {bob: bob.stops, refused: refused.stops},
    refusedAttempts: opened.filter((socket) => socket.url.includes('/ws/secure')).length,
  }));
  bob.api.close();
  alice.api.close();
  process.exit(0);
})().catch((error) => { console.error(error); process.exit(1); });
"""


async def test_the_documented_client_loop_resumes_resends_and_stops_on_4401(
    server: ServerThread, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ws").is_dir():
        pytest.fail("needs node and tests/js/node_modules (`make test`, or `npm ci` in tests/js)")
    script = tmp_path / "doc_client.js"
    script.write_text(DOC_CLIENT_HARNESS)
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        server.ws,
        str(DOCS),
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode().strip().splitlines()[-1])

    said = [text for _, text in seen["bob"]]
    # In log order: Bob's offline message is resent when he is back, which may be before or
    # after Alice's two and three are committed; each is there once.
    assert said[0] == "one" and said[-1] == "four", seen
    assert sorted(said[1:-1]) == ["three", "two", "written while away"], seen
    assert said.index("two") < said.index("three"), seen
    ids = [event_id for event_id, _ in seen["bob"]]
    assert ids == sorted(set(ids)), "each once, in log order"
    first, resumed = seen["urls"]
    assert "last_event_id" not in first
    query = parse_qs(urlsplit(resumed).query)
    assert query["last_event_id"] == [str(ids[0])], "resumed from the highest event_id seen"
    log_id = (await rows(server, "SELECT log_id::text FROM log_head"))[0]["log_id"]
    assert query["log_id"] == [log_id]
    assert seen["stops"] == {"bob": [], "refused": [4401]}
    assert seen["refusedAttempts"] == 1, "no reconnecting after 4401"
