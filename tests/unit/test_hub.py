"""Delivery (productflo.hub): who of this process's connections gets each event, in memory.

Absence is shown without waiting for time to pass: the hub dispatches in log order, so once a
connection has received a later event, it would already have received an earlier one meant for it.
"""

from __future__ import annotations

import pytest

from tests.unit.conftest import Start
from tests.unit.memory import MemoryLog, acknowledges, appended, chat, error_code, membership

pytestmark = pytest.mark.anyio


async def test_a_room_event_reaches_the_rooms_members_and_no_one_else(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended(user, "r", "join") for user in ("alice", "carol")])
    await log.append([appended("bob", "s", "join")])
    process = await start()
    alice, bob, carol = [await process.connect(user) for user in ("alice", "bob", "carol")]
    await alice.send(chat("r", "for r only", "m1"))
    ack = (await alice.transport.until(acknowledges("m1")))[-1]
    assert await carol.transport.next() == ack
    await bob.send(chat("s", "for s", "b1"))  # after alice's chat in the log
    received = await bob.transport.until(acknowledges("b1"))
    assert all(e["room_id"] == "s" for e in received)


async def test_every_connection_of_a_user_gets_their_rooms_events(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended("alice", "r", "join")])
    process = await start()
    phone, laptop = await process.connect("alice"), await process.connect("alice")
    await phone.send(chat("r", "from my phone", "m1"))
    ack = (await phone.transport.until(acknowledges("m1")))[-1]
    assert await laptop.transport.next() == ack


async def test_a_joiner_gets_the_rooms_events_from_their_join_on(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended("alice", "r", "join")])
    process = await start()
    alice, bob = await process.connect("alice"), await process.connect("bob")
    await alice.send(chat("r", "before bob", "m1"))
    await alice.transport.until(acknowledges("m1"))
    await bob.send({"code": "join", "room_id": "r"})
    await alice.send(chat("r", "after bob", "m2"))
    received = await bob.transport.until(lambda e: e.get("client_msg_id") == "m2")
    assert [membership(e) for e in received] == ["join", None]
    assert received[-1]["data"] == {"message": "after bob"}


async def test_a_leave_of_a_room_one_is_not_in_is_still_acknowledged(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice")
    await alice.send({"code": "leave", "room_id": "r", "client_msg_id": "l1"})
    answer = await alice.transport.next()
    assert membership(answer) == "leave" and answer["client_msg_id"] == "l1"
    assert alice.answers == [answer]


async def test_typing_reaches_the_other_members_and_is_not_stored(
    log: MemoryLog, start: Start
) -> None:
    await log.append([appended(user, "r", "join") for user in ("alice", "bob")])
    process = await start()
    alice, bob = await process.connect("alice"), await process.connect("bob")
    await bob.send({"code": "typing", "room_id": "r", "data": {"is_typing": True}})
    typing = await alice.transport.next()
    assert typing["code"] == "typing" and typing["user_id"] == "bob"
    assert typing["room_id"] == "r" and typing["data"] == {"is_typing": True}
    assert bob.answers == [None]  # a signal has no answer
    await bob.send(chat("r", "done typing", "b1"))
    received = await bob.transport.until(acknowledges("b1"))
    assert [e["code"] for e in received] == ["chat_response"]  # not his own typing
    assert [e.type for e in log.events] == ["join", "join", "chat"]


async def test_a_room_opened_from_secure_is_closed_to_anonymous_connections(
    log: MemoryLog, start: Start
) -> None:
    process = await start()
    alice = await process.connect("alice", authenticated=True)
    await alice.send(chat("vault", "signed in only", "a1"))
    await alice.transport.until(acknowledges("a1"))
    mallory = await process.connect("mallory")
    await mallory.send(chat("vault", "let me in", "x1"))
    refusal = await mallory.transport.next()
    assert error_code(refusal) == "FORBIDDEN" and refusal["client_msg_id"] == "x1"
    assert [e.stream for e in log.events if e.user_id == "mallory"] == ["user:mallory"]
    # Alice's own id over /ws: her membership, but not the room.
    anonymous = await process.connect("alice")
    assert anonymous.welcome["data"]["details"]["rooms"] == []
    await alice.send(chat("vault", "still secret", "a2"))
    await alice.transport.until(acknowledges("a2"))
    await anonymous.send(chat("lobby", "hello", "n1"))  # after a2 in the log
    received = await anonymous.transport.until(acknowledges("n1"))
    assert all(e["room_id"] == "lobby" for e in received)
