"""Mentions become notifications: live, replayed, listed, and marked read."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from productflo.auth import mint
from productflo.database import DatabaseUrl
from productflo.events import store
from productflo.events.models import MAX_POSITION, RecordedEvent
from productflo.handlers.mentions import mentioned
from productflo.projections.notifications import (
    NOTIFICATION_TYPE,
    READ_TYPE,
    Notification,
    Notifications,
    fold,
)
from tests.conftest import ServerThread

pytestmark = pytest.mark.anyio


def test_mentions_are_found_in_text() -> None:
    text = "@bob, can you and @carol.smith check this? (mail a@b.com, not @bob again)."
    assert mentioned(text) == ["bob", "carol.smith"]


async def _listed(server: ServerThread, user: str, **params: Any) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {mint(server.settings, user)}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/users/me/notifications", params=params)
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()["notifications"]
    return found


async def _until_listed(server: ServerThread, user: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while len(found := await _listed(server, user)) < count:
            await asyncio.sleep(0.05)
    return found


async def test_an_online_user_is_notified_live(connect: Any, server: ServerThread) -> None:
    alice = await connect("/ws?user_id=alice")
    bob = await connect("/ws?user_id=bob")  # not even in the room
    await alice.chat("design", "@bob have a look at the enclosure")
    note = await bob.recv_code("notification")
    assert note["status"] == "success"
    assert note["user_id"] == "bob"
    assert note["room_id"] == "design"
    details = note["data"]["details"]
    assert details["kind"] == "mention" and details["by"] == "alice"
    assert details["text"] == "@bob have a look at the enclosure"
    assert isinstance(note["event_id"], int)
    await alice.recv_code("chat_response")
    assert await alice.nothing_within(0.3), "the sender is not notified"


async def test_an_offline_user_gets_the_notification_on_resume(
    connect: Any, server: ServerThread
) -> None:
    bob = await connect("/ws?user_id=bob")
    last = bob.welcome["data"]["details"]["last_event_id"]
    await bob.close()
    alice = await connect("/ws?user_id=alice")
    await alice.chat("design", "ping @bob")
    await alice.recv_code("chat_response")
    await _until_listed(server, "bob", 1)
    bob = await connect(f"/ws?user_id=bob&last_event_id={last}")
    note = await bob.recv_code("notification")
    assert note["data"]["details"]["by"] == "alice"
    done = await bob.recv_code("system")
    assert done["data"]["details"]["replay_complete"] is True


async def test_notifications_are_listed_and_marked_read(connect: Any, server: ServerThread) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.chat("r", "@bob first")
    await alice.chat("r", "@bob second, and @alice is not notified of herself")
    listed = await _until_listed(server, "bob", 2)
    assert [n["details"]["text"][:12] for n in listed] == ["@bob second,", "@bob first"]
    assert all(n["read"] is False for n in listed)
    assert await _listed(server, "alice") == []

    headers = {"Authorization": f"Bearer {mint(server.settings, 'bob')}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        marked = await http.post(
            "/users/me/notifications/read", json={"up_to": listed[1]["event_id"]}
        )
        assert marked.status_code == 200
    [unread] = await _listed(server, "bob", unread="true")  # at once: the read is in the log
    assert unread["event_id"] == listed[0]["event_id"]


async def test_a_token_limited_to_some_rooms_lists_only_their_notifications(
    connect: Any, server: ServerThread
) -> None:
    alice = await connect("/ws?user_id=alice")
    await alice.chat("design-a", "@bob in design")
    await alice.chat("finance", "@bob in finance")
    await _until_listed(server, "bob", 2)
    headers = {"Authorization": f"Bearer {mint(server.settings, 'bob', rooms=['design-*'])}"}
    async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
        response = await http.get("/users/me/notifications")
    assert [n["details"]["room_id"] for n in response.json()["notifications"]] == ["design-a"]


async def test_notifications_need_a_token(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/users/me/notifications")).status_code == 401
        assert (
            await http.post("/users/me/notifications/read", json={"up_to": 1})
        ).status_code == 401


# -- the fold, and reads that are never behind what was delivered ------------------------------

_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(position: int, kind: str, **data: Any) -> RecordedEvent:
    return RecordedEvent(
        position,
        uuid.uuid4(),
        "user:bob",
        position,
        kind,
        data,
        {},
        _T0 + timedelta(seconds=position),
    )


def _note(position: int) -> RecordedEvent:
    return _event(position, NOTIFICATION_TYPE, message=f"n{position}", details={"room_id": "r"})


def _read(position: int, up_to: Any) -> RecordedEvent:
    return _event(position, READ_TYPE, up_to=up_to)


def _at(position: int) -> datetime:
    return _T0 + timedelta(seconds=position)


def test_a_read_marks_the_unread_notifications_up_to_its_position_at_its_time() -> None:
    folded = fold([], [_note(1), _note(2), _read(3, up_to=1), _note(4), _read(5, up_to=4)])
    assert [(n.position, n.read_at) for n in folded] == [(4, _at(5)), (2, _at(5)), (1, _at(3))]


def test_a_read_marks_nothing_that_comes_after_it_whatever_its_up_to() -> None:
    folded = fold([], [_note(1), _read(2, up_to=10**30), _note(3), _read(4, up_to="x")])
    assert [(n.position, n.read_at) for n in folded] == [(3, None), (1, _at(2))]


def test_folding_the_rest_of_the_log_into_rows_gives_the_same_as_folding_it_all() -> None:
    events = [_note(1), _note(2), _read(3, up_to=2), _note(4), _read(5, up_to=4), _note(6)]
    for cut in range(len(events) + 1):
        assert fold(fold([], events[:cut]), events[cut:]) == fold([], events), cut


async def test_the_projection_builds_what_the_fold_gives(database_url: DatabaseUrl) -> None:
    """Batches that part a notification from the read that marks it, one per event included."""
    events = [_note(1), _note(2), _read(3, up_to=1), _note(4), _read(5, up_to=MAX_POSITION)]
    events += [_note(6), _note(7), _read(8, up_to=6), _note(9)]
    connection = await store.connect(database_url.dsn)
    projection = Notifications()
    try:
        for size in (1, 2, 3, len(events)):
            suffix = f"_by_{size}"
            for statement in projection.create(suffix):
                await connection.execute(statement)
            for start in range(0, len(events), size):
                async with connection.transaction():
                    await projection.apply(connection, events[start : start + size], suffix)
            rows = await connection.fetch(
                f"SELECT position, data, created_at, read_at FROM notifications{suffix} "
                "ORDER BY position DESC"
            )
            built = [
                Notification(r["position"], r["data"], r["created_at"], r["read_at"]) for r in rows
            ]
            assert built == fold([], events), size
    finally:
        await connection.close()


async def test_a_notification_delivered_live_is_listed_and_read_while_the_projection_is_behind(
    connect: Any, server: ServerThread
) -> None:
    """The notifications projection is held back by a lock on its table: the listing reads
    what it has not applied from the log."""
    holder = await asyncpg.connect(server.database.dsn)
    try:
        async with holder.transaction():
            # Reads go on; the projection's writes wait for the lock.
            await holder.execute("LOCK TABLE notifications IN EXCLUSIVE MODE")
            bob = await connect("/ws?user_id=bob")
            alice = await connect("/ws?user_id=alice")
            await alice.chat("design", "@bob while the projection is behind")
            note = await bob.recv_code("notification")
            applied = await holder.fetchval(
                "SELECT position FROM projection_checkpoints WHERE name = 'notifications'"
            )
            assert applied < note["event_id"], "the projection was not held back"

            [listed] = await _listed(server, "bob")
            assert listed["event_id"] == note["event_id"] and listed["read"] is False
            assert listed["details"] == note["data"]["details"]
            assert [n["event_id"] for n in await _listed(server, "bob", unread="true")] == [
                note["event_id"]
            ]

            headers = {"Authorization": f"Bearer {mint(server.settings, 'bob')}"}
            async with httpx.AsyncClient(base_url=server.http, headers=headers) as http:
                marked = await http.post(
                    "/users/me/notifications/read", json={"up_to": note["event_id"]}
                )
                assert marked.status_code == 200, marked.text
            assert await _listed(server, "bob", unread="true") == []
            [read] = await _listed(server, "bob")
            assert read["event_id"] == note["event_id"] and read["read"] is True
            assert (
                await holder.fetchval("SELECT count(*) FROM notifications WHERE user_id = 'bob'")
                == 0
            ), "the projection applied the notification: the test shows nothing"
    finally:
        await holder.close()
