"""Delivery: the log's events handed to this process's connections, in log order.

The hub follows the log with one tailer (its own commits are offered to it, so they go out without
a round trip; everyone else's are read) and, event by event, updates the membership of the users
connected here and hands each envelope to the sessions that should see it. Nothing else delivers
log events, so every session sees each position once and in order, whichever process wrote it.

Membership of a user is loaded when their first session attaches, from the log up to the position
the hub has dispatched, under the same lock as dispatching: the load and the live updates meet
exactly, without a window in which a join or leave could be lost.

Membership belongs to users, but what a connection may read is its own (productflo.access): an
anonymous connection naming a user's id does not receive that user's secure rooms, nor a token
with a `rooms` claim the rooms outside it. So each event is checked against each receiving
session. Whether a room is secure is learned from the room's first event as it is dispatched, and
looked up (once per process) for rooms opened before this process started, before the batch that
needs it is dispatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from productflo import membership, metrics
from productflo.access import Access, Principal, event_room
from productflo.audience import DOC_OPEN, Opened, fold_opened, membership_change
from productflo.envelopes import Audience, envelope, now_iso, render_event
from productflo.errors import CloseCode, StoreError
from productflo.events.models import JsonObject, RecordedEvent
from productflo.events.store import EventStore
from productflo.events.tailer import Tailer
from productflo.outbox import Outgoing

log = logging.getLogger(__name__)


class Recipient(Protocol):
    """What the hub delivers to: one connection (productflo.session.Session, structurally). The
    hub knows this much of a session and no more, so that the arrow points one way."""

    @property
    def id(self) -> str:
        """The connection's id, as appended events carry it in `metadata.connection_id`."""
        ...

    @property
    def user_id(self) -> str: ...

    @property
    def identity(self) -> Principal: ...

    def deliver(self, message: Outgoing) -> None:
        """Queue an envelope; never waits."""
        ...

    def request_close(self, code: int, reason: str, *, drain: bool = True) -> None: ...

    async def wait_closed(self) -> None:
        """Return once the connection is closed (the lifespan's shutdown waits for it)."""
        ...


@dataclass(frozen=True)
class Attachment:
    rooms: frozenset[str]
    position: int  # the last position dispatched before the session was attached


class Hub:
    def __init__(self, store: EventStore, *, poll_interval: float = 0.5) -> None:
        self.store = store
        self.access = Access(store)
        self._looked_up = False  # whether the rooms of the batch being dispatched were looked up
        self._poll_interval = poll_interval
        self._sessions: dict[str, set[Recipient]] = defaultdict(set)
        self._connections: dict[str, Recipient] = {}  # session id -> session
        self._rooms: dict[str, set[str]] = {}  # user -> rooms, for users connected here
        self._members: dict[str, set[str]] = defaultdict(set)  # room -> users connected here
        self._opened: dict[str, set[Opened]] = {}  # user -> documents opened, as _rooms
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._tailer: Tailer | None = None
        self._metrics: asyncio.Task[None] | None = None
        self._unwatch_lag: Callable[[], None] | None = None
        self.dispatched = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # heap by position
        self._tiebreak = itertools.count()

    async def start(self) -> None:
        self.dispatched = await self.store.head()
        self._tailer = Tailer(self.store, self.dispatched, poll_interval=self._poll_interval)
        self.store.on_volatile(self._receive_volatile)
        self._task = asyncio.create_task(self._run(), name="productflo-hub")
        recent = self.store.recent
        self._unwatch_lag = metrics.watch_lag(
            metrics.TAIL_LAG, lambda: recent.head - self.dispatched
        )
        self._metrics = asyncio.create_task(metrics.publish_lags(), name="productflo-metrics")

    async def stop(self) -> None:
        if self._unwatch_lag is not None:
            self._unwatch_lag()
        for task in (self._metrics, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._tailer is not None:
            self._tailer.close()

    @property
    def sessions(self) -> list[Recipient]:
        return [session for group in self._sessions.values() for session in group]

    # -- sessions ------------------------------------------------------------------------------

    async def attach(self, session: Recipient) -> Attachment:
        """Register a session for delivery from the next position on; returns its user's rooms
        and that position (everything after it will be delivered to the session).

        The rooms are those the session may read: its user's, less those closed to it."""
        user = session.user_id
        async with self._lock:
            if user not in self._rooms:
                rooms = await membership.rooms_of(self.store, user, self.dispatched)
                self._opened[user] = await self.store.opened_docs(user, self.dispatched)
                self._rooms[user] = rooms
                for room in rooms:
                    self._members[room].add(user)
            readable = await self.access.readable(session.identity, self._rooms[user])
            self._sessions[user].add(session)
            self._connections[session.id] = session
            return Attachment(frozenset(readable), self.dispatched)

    def detach(self, session: Recipient) -> None:
        user = session.user_id
        group = self._sessions.get(user)
        if group is None or session not in group:
            return
        group.discard(session)
        self._connections.pop(session.id, None)
        if not group:
            del self._sessions[user]
            self._opened.pop(user, None)
            for room in self._rooms.pop(user, set()):
                self._members[room].discard(user)
                if not self._members[room]:
                    del self._members[room]

    def is_member(self, user_id: str, room_id: str) -> bool:
        return room_id in self._rooms.get(user_id, ())

    # -- dispatch ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._tailer is not None
        while True:
            batch = await self._tailer.next_batch()
            async with self._lock:
                try:
                    await self._learn(batch)
                    self._looked_up = True
                except StoreError:  # sessions that needed the answer are closed to resume
                    self._looked_up = False
                    log.warning(
                        "could not look up the rooms of events up to %d", batch[-1].position
                    )
                delivered = 0
                for event in batch:
                    try:
                        delivered += self._dispatch(event)
                    except Exception:  # one event must not stop delivery for everyone
                        log.exception("could not dispatch event %d", event.position)
                self.dispatched = batch[-1].position
            metrics.DELIVERIES.inc(delivered)  # once a batch: once a delivery costs measurably
            while self._waiters and self._waiters[0][0] <= self.dispatched:
                _, _, waiter = heapq.heappop(self._waiters)
                if not waiter.done():
                    waiter.set_result(None)

    async def dispatched_past(self, position: int) -> None:
        """Return once the event at `position` has been handed to this process's sessions."""
        if self.dispatched >= position:
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (position, next(self._tiebreak), waiter))
        await waiter

    async def _learn(self, batch: list[RecordedEvent]) -> None:
        """Know, before dispatching, whether each room the batch concerns is secure: from the
        rooms' first events where the batch has them, else looked up (once per process)."""
        for event in batch:
            self.access.learn_from(event)
        rooms = {room for event in batch if (room := event_room(event)) is not None}
        await self.access.load(rooms)

    def _dispatch(self, event: RecordedEvent) -> int:
        """Hand `event` to the sessions that should see it; returns how many."""
        delivered = 0
        when = "before" if event.type == DOC_OPEN else membership_change(event.type)
        if when == "before":
            self._apply_membership(event)  # the joiner sees their own join
        rendered = render_event(event)
        if rendered is not None:
            audience = rendered.audience
            if audience.kind == "room":
                recipients = self._members.get(audience.name, set())
                if audience.doc is not None:
                    recipients = self._openers(recipients, audience.name, audience.doc)
            else:
                recipients = {audience.name}
            room = event_room(event)
            outgoing = Outgoing(rendered.envelope)  # one envelope, encoded once, for everyone
            sender = self._connections.get(event.metadata.get("connection_id", ""))
            for user in recipients:
                for session in self._sessions.get(user, ()):
                    if room is None or self._may_read(session, room):
                        session.deliver(outgoing)
                        delivered += 1
                        if session is sender:
                            sender = None
            if sender is not None:
                # The sender's copy is its acknowledgement, even where the event's audience
                # leaves it out (a `leave` of a room it was not in): every message is answered.
                sender.deliver(outgoing)
                delivered += 1
        if when == "after":
            self._apply_membership(event)  # ... and the leaver their own leave
        return delivered

    def _openers(self, users: set[str], room: str, doc: str) -> set[str]:
        """Of `users`, those who opened the document `doc` of `room`."""
        return {user for user in users if (room, doc) in self._opened.get(user, ())}

    def _may_read(self, session: Recipient, room: str) -> bool:
        allowed = self.access.may_read(session.identity, room, looked_up=self._looked_up)
        if allowed is None:
            # Whether the room is secure could not be looked up: rather than guess, close the
            # connection; it resumes with last_event_id, and replay applies the same rule.
            session.request_close(
                CloseCode.INTERNAL_ERROR, "reconnect with last_event_id", drain=False
            )
            return False
        return allowed

    def _apply_membership(self, event: RecordedEvent) -> None:
        user, room = event.user_id, event.room_id
        if user is None or room is None or user not in self._rooms:
            return
        if event.type == DOC_OPEN:
            fold_opened(self._opened[user], event.type, room, event.data.get("doc_id"))
            return
        membership.apply(self._rooms[user], event)
        if room in self._rooms[user]:
            self._members[room].add(user)
        else:
            self._members[room].discard(user)

    # -- volatile signals ----------------------------------------------------------------------

    async def publish_typing(self, user_id: str, room_id: str, is_typing: bool) -> None:
        await self.store.publish_volatile(
            {
                "kind": "typing",
                "user_id": user_id,
                "room_id": room_id,
                "is_typing": is_typing,
                "timestamp": now_iso(),
            }
        )

    async def publish(self, audience: Audience, message: JsonObject) -> None:
        """Send an envelope that is not stored (an answer as it streams, progress logs) to its
        audience on every process, with the same read rules as the log's events."""
        await self.store.publish_volatile(
            {
                "kind": "envelope",
                "audience": audience.kind,
                "name": audience.name,
                "envelope": message,
            }
        )

    async def publish_awareness(
        self, sender: Recipient, room_id: str, doc_id: str, update: str
    ) -> None:
        """Relay a Yjs awareness update (cursors, selections) to the others who opened the
        document, on every process; never stored."""
        await self.store.publish_volatile(
            {
                "kind": "awareness",
                "connection_id": sender.id,
                "user_id": sender.user_id,
                "room_id": room_id,
                "doc_id": doc_id,
                "update": update,
                "timestamp": now_iso(),
            }
        )

    def _receive_volatile(self, payload: dict[str, Any]) -> None:
        if payload.get("kind") == "envelope":
            self._receive_envelope(payload)
        elif payload.get("kind") == "awareness":
            self._receive_awareness(payload)
        elif payload.get("kind") == "typing":
            self._receive_typing(payload)

    def _receive_envelope(self, payload: dict[str, Any]) -> None:
        kind, name, message = payload.get("audience"), payload.get("name"), payload.get("envelope")
        if not isinstance(name, str) or not isinstance(message, dict):
            return
        if kind == "room":
            recipients: set[str] = self._members.get(name, set())
        elif kind == "user":
            recipients = {name}
        else:
            return
        room = message.get("room_id")
        outgoing = Outgoing(message)
        delivered = 0
        for user in recipients:
            for session in self._sessions.get(user, ()):
                # A signal, not an event: where the room's flag is not known, it is dropped.
                if not isinstance(room, str) or self.access.may_read(session.identity, room):
                    session.deliver(outgoing)
                    delivered += 1
        metrics.DELIVERIES.inc(delivered)

    def _receive_awareness(self, payload: dict[str, Any]) -> None:
        user, room, doc = payload.get("user_id"), payload.get("room_id"), payload.get("doc_id")
        if not isinstance(user, str) or not isinstance(room, str) or not isinstance(doc, str):
            return
        message = envelope(
            "success",
            "awareness",
            user,
            {"doc_id": doc, "update": payload.get("update")},
            room_id=room,
            timestamp=str(payload.get("timestamp")),
        )
        outgoing = Outgoing(message)
        sender = payload.get("connection_id")
        delivered = 0
        for member in self._openers(self._members.get(room, set()), room, doc):
            for session in self._sessions.get(member, ()):
                # A signal, not an event: where the room's flag is not known, it is dropped.
                if session.id != sender and self.access.may_read(session.identity, room):
                    session.deliver(outgoing)
                    delivered += 1
        metrics.DELIVERIES.inc(delivered)

    def _receive_typing(self, payload: dict[str, Any]) -> None:
        user, room = payload.get("user_id"), payload.get("room_id")
        if not isinstance(user, str) or not isinstance(room, str):
            return
        message = envelope(
            "success",
            "typing",
            user,
            {"is_typing": bool(payload.get("is_typing"))},
            room_id=room,
            timestamp=str(payload.get("timestamp")),
        )
        outgoing = Outgoing(message)
        delivered = 0
        for member in self._members.get(room, ()):
            if member != user:
                for session in self._sessions.get(member, ()):
                    # A signal, not an event: where the room's flag is not known, it is dropped.
                    if self.access.may_read(session.identity, room):
                        session.deliver(outgoing)
                        delivered += 1
        metrics.DELIVERIES.inc(delivered)
