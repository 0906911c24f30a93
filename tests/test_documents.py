"""Collaborative documents (SPEC section 7) through real sockets: a pycrdt document on each side,
as a Yjs editor would hold one, the server's log and projection in between."""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any

import asyncpg
import httpx
import pytest
from pycrdt import Doc, Text, TextEvent, get_update

from productflo.auth import mint
from productflo.documents import State, decode, seeded, title_of
from productflo.projections import PROJECTIONS
from productflo.projections.documents import Documents
from productflo.projections.framework import rebuild
from tests.client import Client
from tests.conftest import ServerThread
from tests.events import running_store

pytestmark = pytest.mark.anyio

ROOM = "spec-room"
DOC = "tech-spec"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Editor:
    """One editor of a document: a pycrdt document kept in step with the server's."""

    def __init__(self, client: Client, doc_id: str = DOC, room: str = ROOM) -> None:
        self.client = client
        self.doc_id = doc_id
        self.room = room
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("content", type=Text)
        self.outgoing: list[bytes] = []
        self.doc.observe(lambda event: self.outgoing.append(event.update))
        self.sent = 0

    async def open(self, *, with_state: bool = False, **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"doc_id": self.doc_id}
        if with_state:
            data["state_vector"] = b64(self.doc.get_state())
        await self.client.send({"code": "doc_open", "room_id": self.room, "data": data, **extra})
        sync = await self.client.recv_code("doc_sync")
        self.receive(sync)
        return sync

    def receive(self, message: dict[str, Any]) -> None:
        """Apply a doc_sync or doc_update (not echoing it back as an edit of ours)."""
        pending = len(self.outgoing)
        self.doc.apply_update(base64.b64decode(message["data"]["update"]))
        del self.outgoing[pending:]

    async def type(self, text: str, at: int | None = None, **extra: Any) -> None:
        """Edit, and send the update the edit made."""
        self.text.insert(len(self.text) if at is None else at, text)
        await self.flush(**extra)

    async def flush(self, **extra: Any) -> None:
        for update in self.outgoing:
            self.sent += 1
            await self.client.send(
                {
                    "code": "doc_update",
                    "room_id": self.room,
                    "data": {"doc_id": self.doc_id, "update": b64(update)},
                    **extra,
                }
            )
        self.outgoing.clear()

    async def take_updates(self, count: int) -> list[dict[str, Any]]:
        """The next `count` doc_updates of this document, applied."""
        taken = []
        while len(taken) < count:
            message = await self.client.recv_code("doc_update")
            if message["data"]["doc_id"] == self.doc_id and message["room_id"] == self.room:
                self.receive(message)
                taken.append(message)
        return taken


async def _count(server: ServerThread, query: str, *args: Any) -> int:
    connection = await asyncpg.connect(server.database.dsn)
    try:
        return int(await connection.fetchval(query, *args))
    finally:
        await connection.close()


def _updates(server: ServerThread) -> Any:
    return _count(server, "SELECT count(*) FROM events WHERE type = 'doc_update'")


def _bearer(server: ServerThread, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(server.settings, user)}"}


def error_code(message: dict[str, Any]) -> str:
    assert message["status"] == "error", message
    return str(message["data"]["details"]["error_code"])


# -- the pure parts -------------------------------------------------------------------------------


def test_a_snapshot_taken_anywhere_and_the_rest_give_the_same_bytes() -> None:
    """What makes a rebuilt projection byte-equal: wherever a snapshot was taken (live batches
    and a rebuild's end at other positions), the snapshot and the updates after it, applied in
    log order, encode to the same bytes as every update applied one by one."""
    doc: Doc[Any] = Doc(client_id=7)
    text = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(40):
        text.insert(i % (len(text) + 1), "ab"[i % 2])
        if i % 5 == 4:
            del text[0:2]
    whole = State()
    whole.apply(updates)
    assert whole.text == str(text)
    for taken in range(len(updates) + 1):
        snapshot = State()
        snapshot.apply(updates[:taken])
        resumed = State(snapshot.encoded)
        resumed.apply(updates[taken:])
        assert resumed.encoded == whole.encoded, taken


def test_what_a_state_vector_lacks_is_all_it_lacks() -> None:
    state = State(seeded("# Plan\n\nfirst"))
    behind = State(state.encoded)
    state.apply([_insert(state.encoded, " and second")])
    missing = state.missing(behind.state_vector)
    assert missing != state.encoded
    behind.apply([missing])
    assert behind.text == state.text == "# Plan\n\nfirst and second"
    assert title_of(state.text) == "Plan"


def _insert(encoded: bytes, text: str) -> bytes:
    doc: Doc[Any] = Doc()
    doc.apply_update(encoded)
    before = doc.get_state()
    content = doc.get("content", type=Text)
    content += text
    return get_update(doc.get_update(), before)


@pytest.mark.parametrize(
    "text", ["not base64!", b64(b"garbage\x00\x01"), b64(b"\x01\x02\x03")], ids=str
)
def test_what_is_not_a_yjs_update_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode(text, limit=1000)


def test_an_update_over_the_limit_is_refused() -> None:
    update = seeded("x" * 200)
    assert decode(b64(update), limit=len(update)) == update
    with pytest.raises(ValueError, match="limit"):
        decode(b64(update), limit=len(update) - 1)


# -- through the server ---------------------------------------------------------------------------


async def test_two_editors_converge_and_the_sender_is_answered_with_its_event(
    connect: Any, server: ServerThread
) -> None:
    alice = Editor(await connect("/ws?user_id=alice"))
    bob = Editor(await connect("/ws?user_id=bob"))
    first = await alice.open()
    assert base64.b64decode(first["data"]["update"]) == State().encoded  # nothing yet
    await bob.open()

    await alice.type("Hello")
    [echo] = await alice.take_updates(1)
    [seen] = await bob.take_updates(1)
    assert echo["event_id"] == seen["event_id"] and echo["user_id"] == "alice"
    await bob.type(" world")
    await alice.take_updates(1)
    await bob.take_updates(1)
    assert str(alice.text) == str(bob.text) == "Hello world"
    assert await _updates(server) == 2


async def test_only_members_who_opened_the_document_receive_its_updates(
    connect: Any, server: ServerThread
) -> None:
    alice = Editor(await connect("/ws?user_id=alice"))
    carol = await connect("/ws?user_id=carol")
    await carol.join(ROOM)
    await alice.open()
    await alice.type("private draft")
    await alice.take_updates(1)
    await alice.client.chat(ROOM, "after the edit")
    # The chat comes after the update in the log: carol gets it, and nothing of the document.
    received = await _read_until_chat(carol)
    assert received[-1]["data"]["message"] == "after the edit"
    assert [m for m in received if m["code"] == "doc_update"] == []


async def _read_until_chat(client: Client) -> list[dict[str, Any]]:
    """Every message up to and including the next chat_response."""
    read: list[dict[str, Any]] = []
    await client.recv_until(lambda m: read.append(m) or m["code"] == "chat_response")
    return read


async def test_opening_with_a_state_vector_sends_only_what_it_lacks(
    connect: Any, server: ServerThread
) -> None:
    alice = Editor(await connect("/ws?user_id=alice"))
    await alice.open()
    for word in ["one", " two", " three"]:
        await alice.type(word)
    await alice.take_updates(3)

    # bob has the first update only (he was there for it), then comes back.
    bob = Editor(await connect("/ws?user_id=bob"))
    first, *later = await _stored_updates(server)
    bob.doc.apply_update(first)
    assert str(bob.text) == "one"
    inserted: list[str] = []

    def count(event: TextEvent) -> None:
        inserted.extend(d["insert"] for d in event.delta if "insert" in d)  # type: ignore[union-attr]

    everything = State()
    everything.apply([first, *later])
    assert len(later) == 2
    lacking = get_update(everything.encoded, bob.doc.get_state())
    subscription = bob.text.observe(count)
    sync = await bob.open(with_state=True)
    bob.text.unobserve(subscription)
    assert base64.b64decode(sync["data"]["update"]) == lacking
    assert "".join(inserted) == " two three", "the sync held more (or less) than was missing"
    assert str(bob.text) == "one two three"
    assert base64.b64decode(sync["data"]["state_vector"]) == everything.state_vector
    assert sync["data"]["version"] == 3


async def _stored_updates(server: ServerThread) -> list[bytes]:
    """Every doc_update in the log, in order."""
    connection = await asyncpg.connect(server.database.dsn)
    try:
        rows = await connection.fetch(
            "SELECT data->>'update' AS u FROM events WHERE type = 'doc_update' ORDER BY position"
        )
    finally:
        await connection.close()
    return [base64.b64decode(row["u"]) for row in rows]


async def test_updates_committed_while_a_sync_is_read_come_once_after_it(
    connect: Any, server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates committed while a doc_open's sync is being read reach the opener exactly once,
    after the doc_sync and in log order: none lost behind it, none twice."""
    current = Documents.current
    reading = threading.Event()  # the server runs in a thread of its own
    typed = 30

    async def slow(store: Any, room: str, doc: str, upto: int) -> Any:
        # Reading takes until every update is in the log (and on its way to the reader).
        reading.set()
        while await store.head() < upto + typed:
            await asyncio.sleep(0.01)
        return await current(store, room, doc, upto)

    monkeypatch.setattr(Documents, "current", staticmethod(slow))
    writer = Editor(await connect("/ws?user_id=writer"))
    await writer.client.join(ROOM)
    reader = Editor(await connect("/ws?user_id=reader"))
    await reader.client.send({"code": "doc_open", "room_id": ROOM, "data": {"doc_id": DOC}})
    await asyncio.to_thread(reading.wait, 10)
    for i in range(typed):
        await writer.type(str(i % 10))
    first = await reader.client.recv()
    while first["code"] != "doc_sync":
        assert first["code"] != "doc_update", "an update came before the doc_sync"
        first = await reader.client.recv()
    reader.receive(first)
    positions = []
    while len(str(reader.text)) < typed:
        message = await reader.client.recv_code("doc_update")
        before = str(reader.text)
        reader.receive(message)
        assert str(reader.text) != before, "an update the sync held came again"
        positions.append(message["event_id"])
    assert positions == sorted(positions) and positions[0] > first["event_id"]
    assert str(reader.text) == str(writer.text)


async def test_a_resent_update_is_stored_once_and_answered_with_the_original(
    connect: Any, server: ServerThread
) -> None:
    alice = Editor(await connect("/ws?user_id=alice"))
    await alice.open()
    alice.text.insert(0, "once")
    [update] = alice.outgoing
    message = {
        "code": "doc_update",
        "room_id": ROOM,
        "client_msg_id": "edit-1",
        "data": {"doc_id": DOC, "update": b64(update)},
    }
    await alice.client.send(message)
    first = await alice.client.recv_code("doc_update")
    await alice.client.send(message)
    again = await alice.client.recv_code("doc_update")
    assert again["event_id"] == first["event_id"]
    assert await _updates(server) == 1


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"doc_id": DOC, "update": "%%% not base64"}, "base64"),
        ({"doc_id": DOC, "update": b64(b"garbage\x00\x01")}, "not a Yjs update"),
        ({"update": b64(seeded("x"))}, "doc_id is required"),
        ({"doc_id": DOC}, "update is required"),
        ({"doc_id": "no spaces allowed", "update": b64(seeded("x"))}, "doc_id"),
    ],
    ids=["not-base64", "not-yjs", "no-doc-id", "no-update", "bad-doc-id"],
)
async def test_a_bad_update_is_refused_and_changes_nothing(
    connect: Any, server: ServerThread, data: dict[str, Any], says: str
) -> None:
    alice = Editor(await connect("/ws?user_id=alice"))
    await alice.open()
    await alice.type("kept")
    await alice.take_updates(1)
    await alice.client.send(
        {"code": "doc_update", "room_id": ROOM, "client_msg_id": "bad", "data": data}
    )
    refusal = await alice.client.recv_until(lambda m: m["status"] == "error")
    assert error_code(refusal) == "INVALID_MESSAGE" and says in refusal["data"]["message"]
    assert refusal["client_msg_id"] == "bad"
    await alice.type(" and more")  # the connection goes on
    await alice.take_updates(1)
    assert await _updates(server) == 2
    async with httpx.AsyncClient(base_url=server.http) as http:
        doc = (await http.get(f"/rooms/{ROOM}/docs/{DOC}", headers=_bearer(server, "a"))).json()
    assert doc["text"] == "kept and more"


async def test_an_update_too_big_for_a_frame_closes_1009_and_changes_nothing(
    start_server: Any, connect_to: Any
) -> None:
    server = start_server(max_message_bytes=2048)
    alice = Editor(await connect_to(server, "/ws?user_id=alice"))
    await alice.open()
    alice.text.insert(0, "y" * 4096)
    await alice.flush()
    assert await alice.client.closed_with() == 1009
    assert await _updates(server) == 0


async def test_the_same_doc_id_in_another_room_is_another_document(
    connect: Any, server: ServerThread
) -> None:
    here = Editor(await connect("/ws?user_id=alice"), room="here")
    there = Editor(await connect("/ws?user_id=alice"), room="there")
    await here.open()
    await there.open()
    await here.type("in here")
    await here.take_updates(1)
    await there.type("over there")
    await there.take_updates(1)
    assert str(here.text) == "in here" and str(there.text) == "over there"
    async with httpx.AsyncClient(base_url=server.http) as http:
        headers = _bearer(server, "alice")
        got = {
            room: (await http.get(f"/rooms/{room}/docs/{DOC}", headers=headers)).json()["text"]
            for room in ("here", "there")
        }
    assert got == {"here": "in here", "there": "over there"}


async def test_an_anonymous_update_to_a_secure_room_is_forbidden(
    connect: Any, server: ServerThread
) -> None:
    token = mint(server.settings, "alice")
    owner = Editor(await connect(f"/ws/secure?access_token={token}"))
    await owner.open()
    await owner.type("secret")
    await owner.take_updates(1)
    intruder = Editor(await connect("/ws?user_id=alice"))
    await intruder.client.send(
        {"code": "doc_open", "room_id": ROOM, "data": {"doc_id": DOC}, "client_msg_id": "peek"}
    )
    refusal = await intruder.client.recv_until(lambda m: m["status"] == "error")
    assert error_code(refusal) == "FORBIDDEN"
    intruder.text.insert(0, "vandal ")
    await intruder.flush(client_msg_id="write")
    refusal = await intruder.client.recv_until(lambda m: m["status"] == "error")
    assert error_code(refusal) == "FORBIDDEN"
    assert await _updates(server) == 1


async def test_a_resumed_connection_is_replayed_the_updates_of_documents_it_had_open(
    connect: Any, server: ServerThread
) -> None:
    bob = Editor(await connect("/ws?user_id=bob"))
    await bob.open()
    await bob.type("start")
    [seen] = await bob.take_updates(1)
    await bob.client.close()  # his last connection: he is reloaded from the log when back

    alice = Editor(await connect("/ws?user_id=alice"))
    await alice.open()
    await alice.type(", then more")
    await alice.take_updates(1)
    elsewhere = Editor(alice.client, doc_id="never-opened")
    await elsewhere.open()
    await elsewhere.type("not bob's")
    await elsewhere.take_updates(1)
    await alice.client.chat(ROOM, "done")
    await alice.client.recv_code("chat_response")

    back = await connect(f"/ws?user_id=bob&last_event_id={seen['event_id']}")
    bob.client = back
    replayed = []
    while True:
        message = await back.recv()
        if message["data"].get("details", {}).get("replay_complete"):
            break
        replayed.append(message)
    updates = [m for m in replayed if m["code"] == "doc_update"]
    assert [m["data"]["doc_id"] for m in updates] == [DOC]
    for message in updates:
        bob.receive(message)
    assert str(bob.text) == "start, then more"


async def test_awareness_reaches_the_other_editors_and_is_never_stored(
    connect: Any, server: ServerThread
) -> None:
    alice = Editor(await connect("/ws?user_id=alice"))
    bob = Editor(await connect("/ws?user_id=bob"))
    carol = await connect("/ws?user_id=carol")
    await carol.join(ROOM)
    await alice.open()
    await bob.open()
    before = await _count(server, "SELECT count(*) FROM events")
    cursor = b64(b'\x01\x2a\x01\x0b{"cursor":3}')
    await alice.client.send(
        {"code": "awareness", "room_id": ROOM, "data": {"doc_id": DOC, "update": cursor}}
    )
    seen = await bob.client.recv_code("awareness")
    assert seen["user_id"] == "alice" and seen["data"] == {"doc_id": DOC, "update": cursor}
    await alice.client.chat(ROOM, "barrier")
    heard = [*await _read_until_chat(carol), *await _read_until_chat(alice.client)]
    assert [m for m in heard if m["code"] == "awareness"] == []
    assert await _count(server, "SELECT count(*) FROM events") == before + 1  # the chat


async def test_the_http_api_lists_documents_and_gives_their_current_text(
    start_server: Any, connect_to: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read what was delivered, however far behind the documents projection is: here it
    is stalled before its first batch (SPEC section 6)."""
    apply = Documents.apply

    async def stalled(self: Documents, connection: Any, events: Any, suffix: str) -> None:
        if suffix == "" and any(e.type == "doc_update" for e in events):
            await asyncio.Event().wait()  # until the server stops and cancels it
        await apply(self, connection, events, suffix)

    monkeypatch.setattr(Documents, "apply", stalled)
    monkeypatch.setattr("productflo.consumers.STOP_GRACE_SECONDS", 0.1)
    server = start_server()
    alice = Editor(await connect_to(server, "/ws?user_id=alice"))
    await alice.open()
    await alice.type("# Technical spec\n\nIt works.")
    await alice.take_updates(1)
    await alice.type(" Truly.")
    await alice.take_updates(1)
    async with httpx.AsyncClient(base_url=server.http) as http:
        headers = _bearer(server, "reader")
        doc = (await http.get(f"/rooms/{ROOM}/docs/{DOC}", headers=headers)).json()
        assert doc["text"] == "# Technical spec\n\nIt works. Truly." and doc["version"] == 2
        [entry] = (await http.get(f"/rooms/{ROOM}/docs", headers=headers)).json()["docs"]
        assert entry["doc_id"] == DOC and entry["title"] == "Technical spec"
        assert entry["version"] == 2 and entry["updated_at"] == doc["updated_at"]
        assert (await http.get(f"/rooms/{ROOM}/docs/nope", headers=headers)).status_code == 404
        assert (await http.get(f"/rooms/{ROOM}/docs")).status_code == 401
        limited = {"Authorization": f"Bearer {mint(server.settings, 'x', rooms=['other'])}"}
        assert (await http.get(f"/rooms/{ROOM}/docs/{DOC}", headers=limited)).status_code == 403
        assert (await http.get(f"/rooms/{ROOM}/docs", headers=limited)).status_code == 403
    assert await _count(server, "SELECT count(*) FROM documents") == 0, "the projection ran"


async def test_the_listing_joins_the_projection_and_the_log_after_it(
    connect: Any, server: ServerThread
) -> None:
    """Documents the projection has applied and updates it has not, counted once each."""
    alice = Editor(await connect("/ws?user_id=alice"))
    await alice.open()
    await alice.type("# First\n")
    [first] = await alice.take_updates(1)
    await _projected(server, first["event_id"])
    other = Editor(alice.client, doc_id="second")
    await other.open()
    await other.type("# Second\n")
    await other.take_updates(1)
    await alice.type("more")
    await alice.take_updates(1)
    async with httpx.AsyncClient(base_url=server.http) as http:
        listed = (await http.get(f"/rooms/{ROOM}/docs", headers=_bearer(server, "a"))).json()
    assert [(d["doc_id"], d["title"], d["version"]) for d in listed["docs"]] == [
        (DOC, "First", 2),
        ("second", "Second", 1),
    ]


async def _projected(server: ServerThread, position: int) -> None:
    """Wait for the documents projection to reach `position`."""
    query = "SELECT position FROM projection_checkpoints WHERE name = 'documents'"
    async with asyncio.timeout(10):
        while await _count(server, f"SELECT coalesce(({query}), 0)") < position:
            await asyncio.sleep(0.05)


async def test_rebuilding_the_projection_gives_byte_equal_documents(
    connect: Any, server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("productflo.projections.documents.SNAPSHOT_UPDATES", 5)
    editors = [Editor(await connect(f"/ws?user_id=u{i}")) for i in range(3)]
    for editor in editors:
        await editor.open()
    for round_ in range(8):
        for editor in editors:
            await editor.type(f"{editor.client.user_id}:{round_} ", at=0)
    for editor in editors:
        await editor.take_updates(24)
    async with running_store(server.database) as store:
        head = await store.head()
        await _projected(server, head)
        before = await Documents.current(store, ROOM, DOC, head)
        assert before.state.text == str(editors[0].text) and before.version == 24
        snapshot = await _count(
            server, "SELECT snapshot_through FROM documents WHERE doc_id = $1", DOC
        )
        assert snapshot > 0, "no snapshot was taken"
        # Batches of another size than live ones: snapshots at other positions.
        monkeypatch.setattr("productflo.projections.framework.REBUILD_BATCH", 7)

        await rebuild(store, PROJECTIONS["documents"], lambda *_: None)
        after = await Documents.current(store, ROOM, DOC, head)
    assert after.state.encoded == before.state.encoded
    assert after.version == before.version
