"""The log, the room rules and a socket, in memory: what the fast tests of Session and Hub use.

`MemoryLog` answers the part of `EventStore` that the session, the hub, its tailer, replay and the
access rules call, with the same semantics: positions from 1 with no gap, in commit order; an
event id already in the log answered with the event as stored (`duplicate=True`); an anonymous
event in a room whose first event was signed in refused (migration 0006); each batch handed to its
`Recent` (the tailers' shared stretch) and the commit listeners right after it commits, then
notified with the new head; volatile signals looped back
to this process's listeners, as NOTIFY does. Appends submitted in the same turn of the event loop
commit as one batch, as they do under the appender. What it does not have (`pool`: the
projections' tables, checkpoints, history) is left out, so that anything reaching for it fails
loudly instead of reading something made up.

`MemoryAccess` is the room rules over that log with an empty rooms projection: whether a room is
secure comes from its first event, as the real rules do for rooms the projection has not reached.

`MemoryTransport` records what a session sends and how it closes, and lets a test wait for the
next envelope. `MemoryProcess` is one server process over them: a hub, and connections to it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from productflo.access import Access
from productflo.auth import Claims
from productflo.errors import AppendRefused, StoreError, StoreUnavailable
from productflo.events.models import (
    MAX_POSITION,
    AppendResult,
    JsonObject,
    NewEvent,
    Outline,
    RecordedEvent,
    room_stream,
)
from productflo.events.recent import Recent
from productflo.events.store import CommitListener, EventStore, VolatileListener
from productflo.hub import Hub
from productflo.jsontext import is_storable
from productflo.outbox import Outgoing
from productflo.session import Identity, Resume, Session
from productflo.settings import Settings

TIMEOUT = 2.0  # the longest a test waits for anything: a bug fails it instead of hanging it
NOTIFY_PAYLOAD_LIMIT = 8000  # PostgreSQL refuses a NOTIFY payload of this many bytes or more
MEMBERSHIP_TYPES = ("join", "leave")


@dataclass
class _Request:
    events: Sequence[NewEvent]
    future: asyncio.Future[list[AppendResult]]


class MemoryLog:
    """EventStore's log in a list (the subset the session and the hub use)."""

    def __init__(self) -> None:
        self.log_id = uuid.uuid4()
        self.events: list[RecordedEvent] = []
        self._by_id: dict[uuid.UUID, RecordedEvent] = {}
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._queue: list[_Request] = []
        self._commit_scheduled = False
        self._held = False
        self._positions_readable = asyncio.Event()
        self._positions_readable.set()
        self.unavailable = False  # appends fail as when the database cannot be reached
        self._commit_listeners: list[CommitListener] = []
        self._volatile_listeners: list[VolatileListener] = []
        self._wake_listeners: set[Callable[[], None]] = set()
        self.recent = Recent(self.read, 0)
        self.recent.listening(True)  # every commit notifies, as a store's LISTEN connection does

    def as_store(self) -> EventStore:
        """This log where an EventStore is asked for: it has every method those callers use."""
        return cast(EventStore, self)

    # -- appending -----------------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> list[AppendResult]:
        return await asyncio.shield(self.submit(events))

    def submit(self, events: Sequence[NewEvent]) -> asyncio.Future[list[AppendResult]]:
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_mark_retrieved)
        if not events:
            future.set_result([])
            return future
        try:
            for event in events:
                _check_storable(event)
        except StoreError as error:
            future.set_exception(error)
            return future
        self._queue.append(_Request(list(events), future))
        self._schedule_commit()
        return future

    def on_commit(self, listener: CommitListener) -> Callable[[], None]:
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    def hold_commits(self) -> None:
        """Keep what is submitted from here on uncommitted (a slow transaction)."""
        self._held = True

    def release_commits(self) -> None:
        self._held = False
        self._schedule_commit()

    def hold_position_reads(self) -> None:
        """Keep `read_positions` (a replay's read of the events it found) waiting: a slow read."""
        self._positions_readable.clear()

    def release_position_reads(self) -> None:
        self._positions_readable.set()

    def _schedule_commit(self) -> None:
        # Like the appender task, commit later: a submitter never sees its commit happen inside
        # submit(), and whatever is submitted meanwhile is one batch.
        if self._queue and not self._held and not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_queued)

    def _commit_queued(self) -> None:
        self._commit_scheduled = False
        if self._held:
            return
        batch, self._queue = self._queue, []
        if self.unavailable:
            for request in batch:
                _fail(request, StoreUnavailable("the database is unreachable"))
            return
        recorded_at = datetime.now(UTC)  # one transaction, one time
        new: list[RecordedEvent] = []
        for request in batch:
            results = [self._append_one(event, recorded_at, new) for event in request.events]
            if any(result is None for result in results):
                _fail(request, AppendRefused("an anonymous event in a secure room"))
            elif not request.future.done():
                request.future.set_result([r for r in results if r is not None])
        if new:
            self.recent.learn(new)
            for listener in self._commit_listeners:
                listener(new)
            # The NOTIFY of a commit reaches the listeners after it, from the LISTEN connection.
            asyncio.get_running_loop().call_soon(self._notified, new[-1].position)

    def _append_one(
        self, event: NewEvent, recorded_at: datetime, new: list[RecordedEvent]
    ) -> AppendResult | None:
        """One event of a batch: a known key answers the event stored under it (an earlier
        batch's, or this one's first occurrence); None when the room's rule refuses it."""
        stored = self._by_id.get(event.event_id)
        if stored is not None:
            return AppendResult(stored, duplicate=True)
        stream = self._streams.get(event.stream, [])
        if _refused(event, stream[0] if stream else None):
            return None
        recorded = RecordedEvent(
            position=len(self.events) + 1,
            event_id=event.event_id,
            stream=event.stream,
            version=len(stream) + 1,
            type=event.type,
            data=event.data,
            metadata=event.metadata,
            recorded_at=recorded_at,
        )
        self.events.append(recorded)
        self._by_id[event.event_id] = recorded
        self._streams.setdefault(event.stream, []).append(recorded)
        new.append(recorded)
        return AppendResult(recorded, duplicate=False)

    # -- reading -------------------------------------------------------------------------------

    async def head(self) -> int:
        return len(self.events)

    async def read(self, after: int, limit: int = 1000) -> list[RecordedEvent]:
        return self.events[max(after, 0) : max(after, 0) + limit]

    async def read_positions(self, positions: list[int]) -> list[RecordedEvent]:
        await self._positions_readable.wait()
        wanted = set(positions)
        return [event for event in self.events if event.position in wanted]

    async def read_stream(
        self,
        stream: str,
        *,
        before: int | None = None,
        after: int = 0,
        limit: int = 100,
        types: Iterable[str] | None = None,
    ) -> list[RecordedEvent]:
        upper = before if before is not None else MAX_POSITION
        kinds = set(types) if types is not None else None
        found = [
            event
            for event in self._streams.get(stream, [])
            if after < event.position < upper and (kinds is None or event.type in kinds)
        ]
        return found[-limit:] if limit > 0 else []

    async def read_outlines(self, streams: Collection[str], after: int, upto: int) -> list[Outline]:
        return [
            Outline(event.position, event.stream, event.type, _actor(event), _about(event))
            for event in self.events[max(after, 0) : max(upto, 0)]
            if event.stream in streams
        ]

    async def membership_streams(self, user_id: str, after: int, upto: int) -> set[str]:
        return {
            event.stream
            for event in self.events[max(after, 0) : max(upto, 0)]
            if event.type in MEMBERSHIP_TYPES and _actor(event) == user_id
        }

    async def last_membership(self, user_id: str, upto: int) -> dict[str, str]:
        last: dict[str, str] = {}
        for event in self.events[: max(upto, 0)]:
            if event.type in MEMBERSHIP_TYPES and _actor(event) == user_id:
                last[event.stream] = event.type
        return last

    async def opened_docs(self, user_id: str, upto: int) -> set[tuple[str, str]]:
        return {
            (event.stream.removeprefix("room:"), event.data["doc_id"])
            for event in self.events[: max(upto, 0)]
            if event.type == "doc_open" and _actor(event) == user_id
        }

    async def first_authenticated(self, streams: Collection[str]) -> dict[str, bool]:
        return {
            stream: self._streams[stream][0].metadata.get("authenticated") is True
            for stream in streams
            if self._streams.get(stream)
        }

    # -- wake-ups and volatile signals ---------------------------------------------------------

    def subscribe_wakeups(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._wake_listeners.add(callback)
        return lambda: self._wake_listeners.discard(callback)

    def on_volatile(self, listener: VolatileListener) -> None:
        self._volatile_listeners.append(listener)

    async def publish_volatile(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload)
        if len(text.encode()) >= NOTIFY_PAYLOAD_LIMIT:
            raise StoreUnavailable("the database is unreachable")  # the driver's error, translated
        asyncio.get_running_loop().call_soon(self._receive_volatile, text)

    def _receive_volatile(self, text: str) -> None:
        message = json.loads(text)
        for listener in self._volatile_listeners:
            listener(message)

    def _notified(self, head: int) -> None:
        self.recent.notified(head)
        self._wake_all()

    def _wake_all(self) -> None:
        for callback in list(self._wake_listeners):
            callback()

    # -- for tests -----------------------------------------------------------------------------

    def of_type(self, type_: str) -> list[RecordedEvent]:
        return [event for event in self.events if event.type == type_]


def _check_storable(event: NewEvent) -> None:
    """What PostgreSQL would refuse fails its own request at submit, as in EventStore."""
    if not all(map(is_storable, (event.stream, event.type, event.data, event.metadata))):
        raise StoreError("the event holds text PostgreSQL cannot store")
    try:
        json.dumps(event.data, allow_nan=False)
        json.dumps(event.metadata, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise StoreError("the event's data is not JSON") from error


def _refused(event: NewEvent, first: RecordedEvent | None) -> bool:
    """Migration 0006's rule: an event that says it is anonymous, in a room whose first event
    (stored, or this one) came from an authenticated connection."""
    if not event.stream.startswith("room:") or first is None:
        return False
    return first.metadata.get("authenticated") is True and (
        event.metadata.get("authenticated") is False
    )


def _text(value: object) -> str | None:
    """A JSON value as `->>` gives it: strings as they are, anything else as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _actor(event: RecordedEvent) -> str | None:
    return _text(event.metadata.get("user_id"))


def _about(event: RecordedEvent) -> str | None:
    if not event.stream.startswith("user:"):
        return None
    details = event.data.get("details")
    return _text(details.get("room_id")) if isinstance(details, dict) else None


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _fail(request: _Request, error: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(error)


class MemoryAccess(Access):
    """The room rules with an empty rooms projection: a room's flag is its first event's."""

    async def load(self, rooms: Iterable[str]) -> None:
        unknown = sorted({room for room in rooms if self.known(room) is None})
        if unknown:
            opened = await self._store.first_authenticated([room_stream(r) for r in unknown])
            for stream, secure in opened.items():
                self.learn(stream.removeprefix("room:"), secure)


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str


class MemoryTransport:
    """A socket that keeps what it is sent. `stall()` makes it stop reading, like a slow client:
    the session's writer then waits in `send` and its outbound queue fills."""

    name = "memory"

    def __init__(self) -> None:
        self.sent: list[JsonObject] = []
        self.closed: Closed | None = None
        self._unread: asyncio.Queue[JsonObject | Closed] = asyncio.Queue()
        self._reading = asyncio.Event()
        self._reading.set()

    async def send(self, messages: Outgoing | Sequence[Outgoing]) -> None:
        """Take one envelope, or several in order (a writer that hands over what piled up)."""
        await self._reading.wait()
        for message in [messages] if isinstance(messages, Outgoing) else messages:
            envelope: JsonObject = json.loads(message.text)  # what a client would parse
            self.sent.append(envelope)
            self._unread.put_nowait(envelope)

    async def close(self, code: int, reason: str) -> None:
        self.closed = Closed(code, reason)
        self._unread.put_nowait(self.closed)

    def stall(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def next(self) -> JsonObject:
        """The next envelope the test has not looked at; fails if the socket closes first."""
        async with asyncio.timeout(TIMEOUT):
            item = await self._unread.get()
        assert not isinstance(item, Closed), f"closed {item} instead of sending"
        return item

    async def until(self, wanted: Callable[[JsonObject], bool]) -> list[JsonObject]:
        """The envelopes up to and including the first `wanted` one."""
        seen = [await self.next()]
        while not wanted(seen[-1]):
            seen.append(await self.next())
        return seen

    async def rest_until_closed(self) -> list[JsonObject | Closed]:
        """What is left to read, ending with the close."""
        rest: list[JsonObject | Closed] = []
        async with asyncio.timeout(TIMEOUT):
            while not rest or not isinstance(rest[-1], Closed):
                rest.append(await self._unread.get())
        return rest


@dataclass
class Connection:
    """A session over a MemoryTransport, and the answers its frames were given (what Socket.IO
    would hand the client's callbacks)."""

    session: Session
    transport: MemoryTransport
    welcome: JsonObject
    answers: list[JsonObject | None]

    async def send(self, frame: JsonObject | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.session.receive(text, self.answers.append)


class MemoryProcess:
    """One server process on a MemoryLog: its hub, with the memory room rules, and sessions."""

    def __init__(self, log: MemoryLog, settings: Settings) -> None:
        self.log = log
        self.settings = settings
        self.hub = Hub(log.as_store(), poll_interval=settings.poll_interval)
        self.hub.access = MemoryAccess(log.as_store())
        self._connections: list[Connection] = []

    async def start(self) -> None:
        await self.hub.start()

    async def connect(
        self,
        user_id: str,
        *,
        authenticated: bool = False,
        expires_at: float | None = None,
        resume: Resume | None = None,
    ) -> Connection:
        claims = None
        if authenticated:
            exp = expires_at if expires_at is not None else time.time() + 3600
            claims = Claims(subject=user_id, raw={"sub": user_id, "exp": exp})
        identity = Identity(user_id, authenticated, claims)
        transport = MemoryTransport()
        hub = self.hub
        session = Session(hub, hub.store, hub.access, self.settings, identity, transport)
        await session.open(resume)
        connection = Connection(session, transport, await transport.next(), [])
        self._connections.append(connection)
        return connection

    async def stop(self) -> None:
        for connection in self._connections:
            connection.transport.resume_reading()
            await connection.session.finish()
        await self.hub.stop()


# -- what the tests say --------------------------------------------------------------------------


def appended(user_id: str, room_id: str, type_: str, data: JsonObject | None = None) -> NewEvent:
    """An event of `user_id` in a room, as their anonymous connection would have appended it."""
    metadata = {"user_id": user_id, "connection_id": "elsewhere", "authenticated": False}
    return NewEvent(room_stream(room_id), type_, data or {}, metadata)


def said(user_id: str, room_id: str, text: str) -> NewEvent:
    return appended(user_id, room_id, "chat", {"message": text})


def chat(room_id: str, text: str, client_msg_id: str | None = None) -> JsonObject:
    """A client's `chat` frame."""
    frame: JsonObject = {"code": "chat", "room_id": room_id, "data": {"message": text}}
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id
    return frame


def error_code(envelope: JsonObject) -> str | None:
    """The SPEC error code of an error envelope; None for anything else."""
    if envelope.get("status") != "error":
        return None
    code: str = envelope["data"]["details"]["error_code"]
    return code


def membership(envelope: JsonObject) -> str | None:
    """`join` or `leave` for a membership event's envelope; None for anything else."""
    details = envelope.get("data", {}).get("details")
    action = details.get("action") if isinstance(details, dict) else None
    return action if envelope.get("code") == "system" and isinstance(action, str) else None


def acknowledges(client_msg_id: str) -> Callable[[JsonObject], bool]:
    """Whether an envelope is the `chat_response` of the frame sent with `client_msg_id`."""
    return lambda e: e.get("code") == "chat_response" and e.get("client_msg_id") == client_msg_id
