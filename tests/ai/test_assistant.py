"""haitch answering in the room: real servers, real PostgreSQL, and for the `openai` provider a
real HTTP server on loopback that speaks the OpenAI streaming protocol (tests/ai/fake_openai.py)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import asyncpg
import pytest
from pycrdt import Doc, Text, get_update
from pydantic import SecretStr

from productflo.database import DatabaseUrl
from productflo.events.models import NewEvent, room_stream
from productflo.events.store import EventStore
from productflo.handlers import assistant as assistant_module
from tests.ai.fake_openai import FakeOpenAI, fake_openai_fixture  # noqa: F401
from tests.client import Client

pytestmark = pytest.mark.anyio

TIMEOUT = 20.0
ANSWER_CODES = {
    "haitch_chat": "chat_response",
    "idea": "idea_response",
    "documentation": "documentation_response",
    "engineering": "engineering_response",
}


def _room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def _openai(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "ai_provider": "openai",
        "ai_base_url": fake.url,
        "ai_model": "test-model",
        "ai_api_key": SecretStr("sk-test-key"),  # model_copy does not validate
        "ai_timeout": 2.0,
        **extra,
    }


def _is_answer(message: dict[str, Any], request_id: int) -> bool:
    data = message.get("data", {})
    if message["status"] == "error":
        return data.get("details", {}).get("in_reply_to") == request_id
    return (
        message["status"] == "success"
        and isinstance(data.get("in_reply_to"), dict)
        and data["in_reply_to"]["event_id"] == request_id
    )


def _answered_text(answer: dict[str, Any]) -> str:
    """The text an answer's pieces add up to (a document's content, else its message)."""
    document = answer["data"].get("document")
    text: str = document["content"] if isinstance(document, dict) else answer["data"]["message"]
    return text


def _streamed_so_far(messages: list[dict[str, Any]], request_id: int) -> str:
    return "".join(m["data"]["details"]["delta"] for m in _pieces(messages, request_id))


async def ask(
    client: Client, code: str, room: str, text: str, **data: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Send an AI request; return its `pending`, what came in between, and the answer.

    "In between" includes the pieces the answer overtook: pieces are not stored (a NOTIFY that
    reaches this process through its LISTEN connection), while the answer is (handed to the hub
    as its append commits), so the last pieces may come after the answer (docs/ai.md). They are
    waited for until they add up to the answer's text."""
    msg_id = uuid.uuid4().hex[:12]
    await client.send(
        {"code": code, "room_id": room, "client_msg_id": msg_id, "data": {"message": text, **data}}
    )
    pending = await client.recv_until(
        lambda m: m["status"] == "pending" and m.get("client_msg_id") == msg_id and "event_id" in m,
        TIMEOUT,
    )
    request_id = pending["event_id"]
    between: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await client.recv(TIMEOUT)
            if _is_answer(message, request_id):
                answer = message
                break
            between.append(message)
        if answer["status"] == "success":
            whole = _answered_text(answer)
            while len(_streamed_so_far(between, request_id)) < len(whole):
                between.append(await client.recv(TIMEOUT))
    return pending, between, answer


def _pieces(between: list[dict[str, Any]], request_id: int) -> list[dict[str, Any]]:
    """The streamed pieces of one answer: `logs` envelopes, status pending, step "stream"."""
    return [
        m
        for m in between
        if m["code"] == "logs"
        and m["status"] == "pending"
        and m["data"]["details"]["step"] == "stream"
        and m["data"]["details"]["in_reply_to"] == request_id
    ]


def _text(pieces: list[dict[str, Any]]) -> str:
    assert [p["data"]["details"]["sequence"] for p in pieces] == list(range(len(pieces)))
    assert all(p["data"]["message"] == p["data"]["details"]["delta"] for p in pieces)
    return "".join(p["data"]["details"]["delta"] for p in pieces)


async def _answers_in_log(database: DatabaseUrl) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database.dsn)
    try:
        return list(
            await connection.fetch(
                "SELECT position, type, stream, data FROM events WHERE type LIKE '%_response' "
                "ORDER BY position"
            )
        )
    finally:
        await connection.close()


# -- the offline provider, end to end ------------------------------------------------------------


@pytest.mark.parametrize("code", list(ANSWER_CODES))
async def test_offline_answers_each_code_in_the_room(server: Any, connect: Any, code: str) -> None:
    room = _room()
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")
    await alice.join(room)
    await bob.join(room)
    await bob.chat(room, "The enclosure must survive rain and a 1 m drop")
    await alice.recv_until(lambda m: m["code"] == "chat_response")

    pending, between, answer = await ask(
        alice, code, room, "Plan the waterproof thermostat enclosure", attached_files=["req.pdf"]
    )

    assert pending["code"] == code and pending["user_id"] == "alice"
    assert answer["code"] == ANSWER_CODES[code] and answer["status"] == "success"
    assert answer["client_msg_id"] == pending["client_msg_id"]
    assert answer["data"]["sender"] == "haitch" and answer["user_id"] == "haitch"
    assert answer["data"]["in_reply_to"]["message"] == "Plan the waterproof thermostat enclosure"
    assert answer["event_id"] > pending["event_id"]
    text = (
        answer["data"]["document"]["content"]
        if code == "documentation"
        else answer["data"]["message"]
    )
    assert "Offline assistant" in text, "the offline provider says what it is"
    assert "enclosure" in text.lower()
    assert "1 m drop" in text, "built from the room's messages too (only Bob said this)"
    if code == "documentation":
        assert "req.pdf" in text, "the attached file is listed"
    streamed = _pieces(between, pending["event_id"])
    assert streamed and _text(streamed) == text
    assert all(m["code"] != ANSWER_CODES[code] for m in between), "a piece is not an answer"
    steps = [m["data"]["details"]["step"] for m in between if m["code"] == "logs"]
    assert steps[:2] == ["context", "model"]

    # Bob, in the room, sees the answer stream in and arrive (the same event), but neither the
    # acknowledgement of Alice's request nor her progress logs. (The answer may overtake the last
    # pieces: they are waited for too.)
    seen_by_bob: list[dict[str, Any]] = []

    def all_of_it() -> bool:
        pieces = _pieces(seen_by_bob, pending["event_id"])
        return answer in seen_by_bob and len(pieces) >= len(streamed)

    async with asyncio.timeout(TIMEOUT):
        while not all_of_it():
            message = await bob.recv()
            if message["code"] in (code, "logs") or message["data"].get("sender") == "haitch":
                seen_by_bob.append(message)
    assert seen_by_bob.count(answer) == 1
    assert _pieces(seen_by_bob, pending["event_id"]) == streamed
    assert [m for m in seen_by_bob if m != answer] == streamed


async def test_a_document_comes_as_markdown_with_a_notification(server: Any, connect: Any) -> None:
    room = _room()
    alice = await connect("/ws?user_id=alice")
    await alice.join(room)
    _, between, answer = await ask(
        alice, "documentation", room, "Technical specification for our thermostat"
    )
    document = answer["data"]["document"]
    assert document["format"] == "markdown"
    assert document["content"].startswith("# ")
    assert document["title"] == document["content"].splitlines()[0].removeprefix("# ").strip()

    # Appended with the answer, so it comes after it: perhaps while `ask` waited for the pieces
    # the answer overtook.
    def is_notification(message: dict[str, Any]) -> bool:
        return message["code"] == "notification"

    notes = [m for m in between if is_notification(m)]
    note = notes[0] if notes else await alice.recv_until(is_notification, TIMEOUT)
    assert note["data"]["details"]["kind"] == "document"
    assert note["data"]["details"]["title"] == document["title"]
    assert note["room_id"] == room


async def test_the_answer_is_in_history_and_replayed(server: Any, connect: Any) -> None:
    room = _room()
    alice = await connect("/ws?user_id=alice")
    await alice.join(room)
    welcome = alice.welcome
    assert welcome is not None
    pending, _, answer = await ask(alice, "idea", room, "Ideas for a solar charger")

    await alice.send({"code": "history", "room_id": room})
    page = await alice.recv_code("history")
    assert answer["event_id"] in [e["event_id"] for e in page["data"]["events"]]
    await alice.close()

    since = welcome["data"]["details"]["last_event_id"]
    again = await connect(f"/ws?user_id=alice&last_event_id={since}")
    replayed = []
    while True:
        message = await again.recv()
        if message["data"].get("details", {}).get("replay_complete"):
            break
        replayed.append(message)
    ids = [m["event_id"] for m in replayed]
    assert pending["event_id"] in ids and answer["event_id"] in ids
    assert ids.count(answer["event_id"]) == 1


# -- an OpenAI-compatible provider ---------------------------------------------------------------


async def test_the_model_gets_the_key_the_model_name_and_the_room(
    start_server: Any, connect_to: Any, fake_openai: FakeOpenAI
) -> None:
    fake_openai.answer(["Use ", "a gasketed ", "polycarbonate case."], delay=0.1)
    server = start_server(**_openai(fake_openai))
    room = _room()
    alice = await connect_to(server, "/ws?user_id=alice")
    await alice.join(room)
    await alice.chat(room, "We ship to Norway, so it must work at -30C")
    await alice.recv_until(lambda m: m["code"] == "chat_response")

    pending, between, answer = await ask(
        alice, "haitch_chat", room, "What enclosure material?", attached_files=["spec.pdf"]
    )

    assert answer["data"]["message"] == "Use a gasketed polycarbonate case."
    assert answer["data"]["model"] == "test-model" and answer["data"]["provider"] == "openai"
    streamed = _pieces(between, pending["event_id"])
    assert len(streamed) >= 2, "pieces arrive as the model sends them"
    assert _text(streamed) == answer["data"]["message"]
    [sent] = fake_openai.requests
    assert sent.headers["authorization"] == "Bearer sk-test-key"
    assert sent.body["model"] == "test-model" and sent.body["stream"] is True
    prompt = "\n".join(m["content"] for m in sent.body["messages"])
    assert "-30C" in prompt, "the room's conversation is the context"
    assert "What enclosure material?" in prompt and "spec.pdf" in prompt
    assert sent.body["messages"][0]["role"] == "system"


@pytest.mark.parametrize("failure", ["http 500", "timeout"])
async def test_a_failing_provider_gives_ai_provider_error_and_the_connection_lives(
    start_server: Any, connect_to: Any, fake_openai: FakeOpenAI, failure: str
) -> None:
    if failure == "timeout":
        fake_openai.hang()
    else:
        fake_openai.fail(500, times=10)
    server = start_server(**_openai(fake_openai, ai_timeout=1.0))
    room = _room()
    alice = await connect_to(server, "/ws?user_id=alice")
    bob = await connect_to(server, "/ws?user_id=bob")
    await alice.join(room)
    await bob.join(room)

    _, _, answer = await ask(alice, "engineering", room, "Size the battery")

    assert answer["status"] == "error" and answer["code"] == "engineering_response"
    assert answer["data"]["details"]["error_code"] == "AI_PROVIDER_ERROR"
    assert answer["user_id"] == "alice" and answer["room_id"] == room
    assert "sk-test-key" not in str(answer) and "127.0.0.1" not in str(answer)
    await alice.chat(room, "still here")  # the connection is alive
    assert (await alice.recv_code("chat_response"))["data"]["message"] == "still here"
    # Only the requester hears of the failure: Bob gets nothing of it before the next chat.
    seen_by_bob = []
    async with asyncio.timeout(TIMEOUT):
        while not seen_by_bob or seen_by_bob[-1]["code"] != "chat_response":
            seen_by_bob.append(await bob.recv())
    assert seen_by_bob[-1]["data"]["message"] == "still here"
    assert not [m for m in seen_by_bob if m["status"] == "error"], seen_by_bob
    assert not [m for m in seen_by_bob if m["code"] == "engineering_response"], seen_by_bob


async def test_a_slow_model_holds_up_neither_the_connection_nor_the_room(
    start_server: Any, connect_to: Any, fake_openai: FakeOpenAI
) -> None:
    fake_openai.answer(["slow ", "answer"], delay=1.0)
    server = start_server(**_openai(fake_openai, ai_timeout=5.0))
    room = _room()
    alice = await connect_to(server, "/ws?user_id=alice")
    await alice.join(room)
    await alice.send({"code": "haitch_chat", "room_id": room, "data": {"message": "think"}})
    await alice.chat(room, "meanwhile")
    first = await alice.recv_until(
        lambda m: m["code"] == "chat_response" and m["status"] == "success", TIMEOUT
    )
    assert first["data"]["message"] == "meanwhile", "the chat is not queued behind the model"
    answer = await alice.recv_until(
        lambda m: m["code"] == "chat_response" and m["status"] == "success", TIMEOUT
    )
    assert answer["data"]["sender"] == "haitch" and answer["data"]["message"] == "slow answer"


async def _answers_to_all(clients: list[Client], per_client: int) -> None:
    """Each client sends `per_client` idea requests at once, then waits for as many answers."""
    room = _room()
    for client in clients:
        await client.join(room)
    for client in clients:
        for n in range(per_client):
            message = {"message": f"{client.user_id} idea {n}"}
            await client.send({"code": "idea", "room_id": room, "data": message})
    for client in clients:
        answered: set[int] = set()
        async with asyncio.timeout(TIMEOUT):
            while len(answered) < per_client:
                m = await client.recv_until(
                    lambda m: m["code"] == "idea_response" and m["status"] == "success"
                )
                if m["data"]["in_reply_to"]["user_id"] == client.user_id:
                    answered.add(m["event_id"])


@pytest.mark.parametrize(
    ("users", "per_user", "concurrency", "most"),
    [
        (1, 1, 8, 1),  # one user's requests wait for each other (ai_per_user)
        (3, 2, 2, 2),  # the process never runs more than ai_concurrency
        (2, 2, 8, 4),  # and otherwise they run at the same time
    ],
)
async def test_requests_run_at_the_same_time_within_their_limits(
    start_server: Any,
    connect_to: Any,
    fake_openai: FakeOpenAI,
    users: int,
    per_user: int,
    concurrency: int,
    most: int,
) -> None:
    fake_openai.answer(["thinking ", "done"], delay=0.4)
    settings = _openai(fake_openai, ai_timeout=5.0, ai_per_user=per_user)
    server = start_server(**settings, ai_concurrency=concurrency)
    clients = [await connect_to(server, f"/ws?user_id=u{n}") for n in range(users)]

    await _answers_to_all(clients, per_client=2)

    assert len(fake_openai.requests) == 2 * users
    assert fake_openai.most_at_once == most


async def test_two_servers_on_one_database_answer_once(
    start_server: Any, connect_to: Any, fake_openai: FakeOpenAI, database_url: DatabaseUrl
) -> None:
    fake_openai.answer(["only ", "once"], delay=0.05)
    one = start_server(**_openai(fake_openai))
    two = start_server(**_openai(fake_openai))
    room = _room()
    alice = await connect_to(one, "/ws?user_id=alice")
    bob = await connect_to(two, "/ws?user_id=bob")
    await alice.join(room)
    await bob.join(room)
    _, _, answer = await ask(alice, "haitch_chat", room, "Who answers?")
    heard = await bob.recv_until(
        lambda m: m["data"].get("sender") == "haitch" and m["status"] == "success", TIMEOUT
    )
    assert heard["event_id"] == answer["event_id"]
    assert heard["data"]["message"] == "only once"
    await asyncio.sleep(1.0)  # time for a second answer, were there going to be one
    assert len(fake_openai.requests) == 1
    assert len(await _answers_in_log(database_url)) == 1


async def test_requests_stored_before_the_assistant_first_ran_are_left_alone(
    start_server: Any, connect_to: Any, database_url: DatabaseUrl
) -> None:
    """An upgrade does not answer, all at once, requests from a release without the assistant."""
    store = EventStore(database_url.dsn)
    await store.start()
    try:
        old = {"user_id": "alice", "authenticated": False}
        await store.append([NewEvent(room_stream("old-room"), "idea", {"message": "old"}, old)])
    finally:
        await store.close()
    server = start_server()
    alice = await connect_to(server, "/ws?user_id=alice")
    room = _room()
    await alice.join(room)

    pending, _, answer = await ask(alice, "idea", room, "new")

    rows = await _answers_in_log(database_url)
    assert [row["position"] for row in rows] == [answer["event_id"]]
    assert answer["data"]["in_reply_to"]["event_id"] == pending["event_id"]


async def test_a_request_that_keeps_failing_is_answered_with_an_error_not_dropped(
    server: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside the server, the requester hears back (fault injected below
    the provider: reading the room's context fails every time)."""
    monkeypatch.setattr(assistant_module, "RETRY_SECONDS", 0.01)
    tries: list[int] = []

    async def broken(request: Any) -> Any:
        tries.append(request.position)
        raise OSError("the context could not be read")

    monkeypatch.setattr(server.app_state.assistant, "_request", broken)
    room = _room()
    alice = await connect("/ws?user_id=alice")
    await alice.join(room)

    pending, _, answer = await ask(alice, "haitch_chat", room, "hello?")

    assert answer["status"] == "error" and answer["code"] == "chat_response"
    assert answer["data"]["details"]["error_code"] == "FAILED_TO_PROCESS_MESSAGE"
    assert "context" not in answer["data"]["message"], "no internals"
    assert tries == [pending["event_id"]] * assistant_module.ATTEMPTS


async def test_an_answer_with_nul_and_wide_characters_is_stored_and_streamed_whole(
    start_server: Any, connect_to: Any, fake_openai: FakeOpenAI
) -> None:
    """jsonb cannot hold U+0000 and a NOTIFY holds 8000 bytes: a model answer with a NUL and
    thousands of characters that JSON escapes wide (CJK, emoji) still arrives, whole, streamed."""
    wide = "防水" * 1500 + "😀" * 500
    fake_openai.answer(["start\x00", wide, " end"])
    server = start_server(**_openai(fake_openai))
    room = _room()
    alice = await connect_to(server, "/ws?user_id=alice")
    await alice.join(room)

    pending, between, answer = await ask(alice, "haitch_chat", room, "say it")

    assert answer["data"]["message"] == "start" + wide + " end"
    streamed = _pieces(between, pending["event_id"])
    assert _text(streamed) == answer["data"]["message"], "no piece lost to the NOTIFY limit"
    assert len(streamed) > 3


async def test_a_generated_document_opens_for_editing_and_haitch_reads_it_as_edited(
    start_server: Any, connect_to: Any, fake_openai: FakeOpenAI
) -> None:
    """The documentation answer is a collaborative document of the room (SPEC section 7), its
    text the answer's; asked again, the model reads the text as the room has edited it."""
    fake_openai.answer(["Noted."])  # from the second request on
    fake_openai.answer(["# Thermostat spec\n\n", "It keeps the room warm."], times=1)
    server = start_server(**_openai(fake_openai))
    room = _room()
    alice = await connect_to(server, "/ws?user_id=alice")
    await alice.join(room)
    _, _, answer = await ask(alice, "documentation", room, "Spec for our thermostat")
    doc_id = answer["data"]["details"]["doc_id"]
    await alice.send({"code": "doc_open", "room_id": room, "data": {"doc_id": doc_id}})
    sync = await alice.recv_code("doc_sync")
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(sync["data"]["update"]))
    content = doc.get("content", type=Text)
    assert str(content) == answer["data"]["document"]["content"]
    assert str(content) == "# Thermostat spec\n\nIt keeps the room warm."

    before = doc.get_state()
    content += " Even at -30C."
    edit = base64.b64encode(get_update(doc.get_update(), before)).decode()
    await alice.send(
        {"code": "doc_update", "room_id": room, "data": {"doc_id": doc_id, "update": edit}}
    )
    await alice.recv_code("doc_update")
    await ask(alice, "haitch_chat", room, "Is the spec complete?")
    await ask(alice, "haitch_chat", room, "And this one?", doc_id=doc_id)
    for sent in fake_openai.requests[1:]:
        prompt = "\n".join(m["content"] for m in sent.body["messages"])
        assert "It keeps the room warm. Even at -30C." in prompt, "the document as edited"
