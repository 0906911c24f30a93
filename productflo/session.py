"""One client connection, whatever the transport: the protocol rules live here, once.

A transport (native WebSocket, Socket.IO) identifies the client, builds a Session over a
`Transport`, feeds it frames, and tells it when the client went away. The session validates each
frame, appends what must be appended (before anything else happens to it), answers errors, and
queues what the hub hands it for a writer task to send.

Lifecycle:

    OPEN --(close asked: abuse, token expired, restart)--> DRAINING --(own appends settled)--+
      |                                                                                      v
      +--(overflow, or a close that cannot wait)------------------------------------> CLOSING
    any --(client went away)--> CLOSED                          CLOSING --(writer done)--> CLOSED

A draining session takes no more frames but still delivers, so that every message it already
accepted is acknowledged before the close (and the close's reason, e.g. RATE_LIMITED, is the last
envelope the client hears). Overflow cannot wait: what is queued is dropped and the client resumes
from its last event id.

Frames from one connection are taken in order and their appends submitted in that order, without
waiting for each commit (up to MAX_IN_FLIGHT at a time): a client's messages enter the log in the
order it sent them, and a busy client is not held to one message per commit.

The outbound queue is bounded in envelopes and in bytes (productflo.outbox): a client that does
not read is closed with 1013 rather than waited for, and resumes from its last event id (the log
has everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from productflo import documents, history, logs, metrics, replay
from productflo.access import Access, Action, event_room
from productflo.audience import Opened
from productflo.auth import Claims
from productflo.envelopes import (
    AI_CODES,
    MAX_HISTORY_LIMIT,
    Inbound,
    InboundCode,
    client_msg_id_in,
    envelope,
    error_envelope,
    parse_inbound,
    render_event,
    system_envelope,
    welcome,
)
from productflo.errors import AppendRefused, CloseCode, ErrorCode, ProtocolError, StoreError
from productflo.events.models import (
    MAX_POSITION,
    AppendResult,
    JsonObject,
    NewEvent,
    RecordedEvent,
    idempotency_key,
    new_event_id,
    room_stream,
    user_stream,
)
from productflo.events.store import EventStore
from productflo.hub import Hub
from productflo.jsontext import decode_object, storable
from productflo.outbox import Close, Outbox, Outgoing
from productflo.projections.documents import Documents
from productflo.ratelimit import RateLimiter
from productflo.settings import Settings

log = logging.getLogger(__name__)

_REJECTED_FRAME_KEPT = 2048  # characters of a refused frame kept in the log for audit
# Live events held for a replaying client, in multiples of the outbound queue, before 1013.
HELD_FACTOR = 10
MAX_IN_FLIGHT = 100  # appends of one connection awaiting their commit; then reading pauses
CATCH_UP_SECONDS = 10.0  # longest wait for this process to reach a resuming client's position
DRAIN_SECONDS = 5.0  # longest wait for a closing session's own appends to be acknowledged
# Most a writer hands its transport at once: what piled up while it last wrote, but no more than
# a socket's write buffer (64 KiB, where the transport pauses the writer) of it, so that the
# outbox, not the buffer under it, is where a slow client's backlog waits and is bounded.
WRITE_BATCH = 256
WRITE_BATCH_BYTES = 64 * 1024


# Told the envelope that answers one inbound message (its acknowledgement, its error, the history
# page), or None when it has none (typing). Socket.IO hands it to the client's callback.
Answer = Callable[[JsonObject | None], None]


def _unheard(answer: JsonObject | None) -> None:
    """The native endpoint has no per-message callback: answers are only delivered."""


class Transport(Protocol):
    """What a session needs from the socket under it."""

    name: str

    async def send(self, messages: Sequence[Outgoing]) -> None:
        """Send the envelopes in order (the writer hands over all that piled up at once)."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Identity:
    user_id: str
    authenticated: bool
    claims: Claims | None = field(default=None, repr=False)


class State(enum.Enum):
    OPEN = "open"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class Resume:
    """Where a reconnecting client stands: the last event id it saw, in which log."""

    last_event_id: int
    log_id: str | None = None

    @classmethod
    def parse(cls, last_event_id: object, log_id: object = None) -> Resume | None:
        """From a query parameter or Socket.IO auth field; ProtocolError if malformed."""
        if last_event_id is None or last_event_id == "":
            return None
        try:
            position = int(str(last_event_id))
        except ValueError:
            position = -1
        if not 0 <= position <= MAX_POSITION or isinstance(last_event_id, bool):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "last_event_id must be a non-negative integer"
            )
        return cls(position, str(log_id) if log_id else None)


@dataclass(frozen=True)
class _InFlight:
    inbound: Inbound
    room_id: str
    future: asyncio.Future[list[AppendResult]]
    frame: str | bytes
    answered: Answer


def _action(code: InboundCode) -> Action:
    if code is InboundCode.JOIN:
        return Action.JOIN
    if code is InboundCode.LEAVE:
        return Action.LEAVE
    if code is InboundCode.TYPING:
        return Action.TYPING
    if code is InboundCode.HISTORY:
        return Action.HISTORY
    if code is InboundCode.AWARENESS:
        return Action.TYPING  # a signal, as typing is
    return Action.SEND  # chat, the AI codes, and a document's open and updates


class Session:
    def __init__(
        self,
        hub: Hub,
        store: EventStore,
        access: Access,
        settings: Settings,
        identity: Identity,
        transport: Transport,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.identity = identity
        logs.bind(connection_id=self.id, user_id=identity.user_id)  # its tasks' log lines
        self.state = State.OPEN
        self._hub = hub
        self._store = store
        self._access = access
        self._settings = settings
        self._transport = transport
        self._received = metrics.MESSAGES_RECEIVED.labels(metrics.transport_label(transport.name))
        self._uncount: Callable[[], None] | None = None  # takes it off productflo_connections
        self._outbox = Outbox(settings.outbound_queue_size, settings.outbound_queue_bytes)
        self._limiter = RateLimiter(settings.rate_limit)
        self._writer: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._held: deque[Outgoing] | None = None
        # Documents being opened: their live updates wait here until the doc_sync has gone out.
        self._syncing: dict[Opened, list[Outgoing]] = {}
        self._held_bytes = 0
        self._in_flight: asyncio.Queue[_InFlight] = asyncio.Queue(maxsize=MAX_IN_FLIGHT)
        self._unsettled = 0  # appends submitted and not yet acknowledged (or refused)
        self._settled = asyncio.Event()
        self._settled.set()
        # room -> (member?, appends in flight): what this session's own appends will make of its
        # membership, until the hub has dispatched them.
        self._intents: dict[str, tuple[bool, int]] = {}

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self, resume: Resume | None = None) -> None:
        """Attach to the hub, then greet: the welcome is the first envelope the client sees.

        With `resume`, what the user missed follows the welcome (in a task of its own, so the
        transport keeps reading meanwhile), then `replay_complete`, then live events, which wait
        in a buffer until the replay is out.
        """
        if resume is not None:
            self._held = deque()
            await self._catch_up(resume)
        attachment = await self._hub.attach(self)
        counted = metrics.connections(self._transport.name, self.identity.authenticated)
        counted.inc()
        self._uncount = counted.dec
        self._writer = asyncio.create_task(self._write(), name=f"session-writer-{self.id}")
        self._follower = asyncio.create_task(self._follow(), name=f"session-acks-{self.id}")
        details: JsonObject = {
            "authenticated": self.identity.authenticated,
            "rooms": sorted(attachment.rooms),
            "log_id": str(self._store.log_id),
            "last_event_id": attachment.position,
        }
        self._put_first(welcome(self.user_id, details))
        self._watch_expiry()
        if resume is not None:
            self._replayer = asyncio.create_task(
                self._replay(resume, attachment.position), name=f"session-replay-{self.id}"
            )

    async def _catch_up(self, resume: Resume) -> None:
        """Wait until this process has dispatched the position the client resumes from, when the
        log has it. Processes sharing a log dispatch it a little apart (up to the poll interval
        when a NOTIFY is lost), so a client may have seen, through another process, a position
        this one has not reached yet; attached before it, the session would take it for a
        position of another log and answer reset."""
        store = self._store
        if resume.log_id not in (None, str(store.log_id)):
            return
        if self._hub.dispatched < resume.last_event_id <= await store.head():
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await self._hub.dispatched_past(resume.last_event_id)

    def _watch_expiry(self) -> None:
        """Close with 4401 when the connection's token expires (SPEC section 6)."""
        claims = self.identity.claims
        if claims is not None:
            delay = max(0.0, claims.expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        error = ProtocolError(ErrorCode.AUTHENTICATION_FAILED, "The token has expired")
        refusal = error_envelope(self.user_id, error)
        self.request_close(CloseCode.AUTHENTICATION_FAILED, "token expired", final=refusal)

    async def finish(self) -> None:
        """The client is gone: stop delivering, stop writing."""
        self.state = State.CLOSED
        self._hub.detach(self)
        if self._uncount is not None:
            self._uncount()
            self._uncount = None
        if self._expiry is not None:
            self._expiry.cancel()
        for task in (self._closer, self._replayer, self._writer, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def request_close(
        self, code: int, reason: str, *, final: JsonObject | None = None, drain: bool = True
    ) -> None:
        """Stop taking frames and close, `final` being the last envelope the client hears.

        With `drain`, what is queued and the acknowledgements of appends still in flight go out
        first (for up to DRAIN_SECONDS); without, they are dropped. A replay in progress is never
        drained: live events are held behind it, and delivering some but not those would leave
        the client a gap."""
        if self.state is not State.OPEN:
            return
        last = [Outgoing(final)] if final is not None else []
        if not drain or self._held is not None:
            self._end(last, Close(code, reason), keep=False)
            return
        self.state = State.DRAINING
        self._closer = asyncio.create_task(
            self._drain_then_close(last, Close(code, reason)), name=f"session-close-{self.id}"
        )

    async def _drain_then_close(self, last: list[Outgoing], close: Close) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await self._settled.wait()
        if self.state is State.DRAINING:
            self._end(last, close, keep=True)

    def _end(self, last: list[Outgoing], close: Close, *, keep: bool) -> None:
        self.state = State.CLOSING
        self._outbox.close_with(last, close, keep=keep)

    async def wait_closed(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._writer)

    # -- outbound ------------------------------------------------------------------------------

    def deliver(self, message: Outgoing | JsonObject) -> None:
        """Queue an envelope for the client; never waits. Overflow closes 1013."""
        if self.state not in (State.OPEN, State.DRAINING):
            return
        item = message if isinstance(message, Outgoing) else Outgoing(message)
        if self._syncing and (doc := _doc_of(item.envelope)) in self._syncing:
            self._syncing[doc].append(item)  # after the doc_sync being read, or in it
            return
        if self._held is not None:  # a replay is being sent: live events wait behind it
            self._held.append(item)
            self._held_bytes += item.size
            if (
                len(self._held) > HELD_FACTOR * self._outbox.max_items
                or self._held_bytes > HELD_FACTOR * self._outbox.max_bytes
            ):
                self._overflow()
            return
        if not self._outbox.offer(item):
            self._overflow()

    def _overflow(self) -> None:
        if self.state in (State.OPEN, State.DRAINING):
            metrics.SLOW_CLIENTS_DROPPED.inc()
            self._end(
                [],
                Close(CloseCode.TRY_AGAIN_LATER, "too slow; resume with last_event_id"),
                keep=False,
            )

    async def _send_in_order(self, item: Outgoing) -> None:
        """Queue with backpressure: the replay goes out as fast as the client reads."""
        if self.state is State.OPEN:
            await self._outbox.put(item)

    async def _replay(self, resume: Resume, upto: int) -> None:
        metrics.REPLAYS.inc()
        log_id = str(self._store.log_id)
        try:
            if resume.last_event_id > upto or resume.log_id not in (None, log_id):
                # Another log (the database was recreated): its positions mean nothing here.
                details = {
                    "replay_complete": True,
                    "reset": True,
                    "last_event_id": upto,
                    "log_id": log_id,
                }
                message = "Unknown log position: start over from history"
                await self._send_in_order(Outgoing(system_envelope(self.user_id, message, details)))
            else:
                await self._replay_missed(resume.last_event_id, upto)
        except StoreError:
            log.warning("replay for %s failed", self.user_id)
            self.request_close(CloseCode.INTERNAL_ERROR, "replay failed; reconnect", drain=False)
            return
        # Flush what arrived live meanwhile, and keep holding until the client has caught up
        # (the writer has taken everything): live events go to the queue without waiting, and
        # the client is still behind by the socket buffers, so a queue that is even half full of
        # replay can overflow while it reads perfectly well. No await between the last check and
        # dropping the buffer, so nothing slips in between.
        while self.state is State.OPEN and (self._held or len(self._outbox)):
            if self._held:
                item = self._held.popleft()
                self._held_bytes -= item.size
                await self._send_in_order(item)
            else:
                await self._outbox.emptied()
        self._held = None

    async def _replay_missed(self, after: int, upto: int) -> None:
        store = self._store
        found = await replay.missed(
            store,
            self.user_id,
            after,
            upto,
            self._settings.replay_limit,
            readable=functools.partial(self._access.readable, self.identity),
        )
        # Closed on the way out, whatever ends the replay: a read ahead is not left behind.
        async with contextlib.aclosing(replay.chunks_at(store, found.positions)) as chunks:
            async for chunk in chunks:
                sent = 0
                for event in chunk:
                    rendered = render_event(event)
                    if rendered is not None:
                        await self._send_in_order(Outgoing(rendered.envelope))
                        sent += 1
                metrics.REPLAYED_EVENTS.inc(sent)
        details = {
            "replay_complete": True,
            "last_event_id": upto,
            "replayed": len(found.positions),
            "truncated": found.truncated,
        }
        message = "Replay complete"
        await self._send_in_order(Outgoing(system_envelope(self.user_id, message, details)))

    def _put_first(self, message: JsonObject) -> None:
        # Only called before anything else can be queued (open): an empty outbox takes anything.
        self._outbox.offer(Outgoing(message))

    async def _write(self) -> None:
        while True:
            messages, close = await self._outbox.take(WRITE_BATCH, WRITE_BATCH_BYTES)
            try:
                if messages:
                    await self._transport.send(messages)
                if close is not None:
                    metrics.count_close(close.code)
                    await self._transport.close(close.code, close.reason)
                    return
            except Exception:  # the socket is gone; the receive side will notice
                log.debug("session %s: send failed", self.id, exc_info=True)
                return
            # Not held while waiting for the next: an idle connection keeps nothing it has sent
            # (the welcome's envelope, JSON and frame were a tenth of an idle connection's memory).
            del messages

    # -- inbound -------------------------------------------------------------------------------

    async def receive(self, frame: str | bytes, answered: Answer = _unheard) -> None:
        """Take one inbound frame: `admit`, then `process`.

        `answered` is called once with the envelope that answers this frame, when there is one,
        as soon as it is delivered; not at all if the connection closes first."""
        if self.admit(frame, answered):
            await self.process(frame, answered)

    def admit(self, frame: str | bytes, answered: Answer = _unheard) -> bool:
        """Whether a frame, as it arrives, is within the connection's limits (size, rate, the
        token's lifetime); one that is not is answered or the connection closed. A transport
        that queues frames (Socket.IO) admits each on arrival, so that the rate is judged on
        what the client sends, not on how fast the session gets through it."""
        if self.state is not State.OPEN:
            return False
        self._received.inc()
        claims = self.identity.claims
        if claims is not None and claims.expires_at <= time.time():
            self._expire()  # the timer is due; a frame must not slip in before it fires
            return False
        if len(frame) > self._settings.max_message_bytes:
            self.request_close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return False
        if self._limiter.admit():
            return True
        if self._limiter.refused_is_abuse():
            self.refuse_flood(frame, answered)
        else:
            self.refuse(_rate_limited(frame), answered)
        return False

    def refuse_flood(self, frame: str | bytes, answered: Answer = _unheard) -> None:
        """Close with 1008 a client that keeps sending past RATE_LIMITED: the acknowledgements
        of what it had sent before go out, then RATE_LIMITED once more, then the close."""
        error = _rate_limited(frame)
        metrics.MESSAGES_REJECTED.labels(error.error_code).inc()
        refusal = error_envelope(self.user_id, error)
        answered(refusal)
        self.request_close(
            CloseCode.POLICY_VIOLATION, "rate limit persistently exceeded", final=refusal
        )

    async def process(self, frame: str | bytes, answered: Answer = _unheard) -> None:
        """Handle an admitted frame. Appends are pipelined: the next frame is read while this
        one commits, and the log keeps them in the order they came (EventStore.submit)."""
        if self.state is not State.OPEN:
            return
        try:
            inbound = parse_inbound(frame, self.user_id)
        except ProtocolError as error:
            metrics.count_inbound(_code_of(frame))
            self.refuse(error, answered, frame=frame)
            return
        metrics.count_inbound(inbound.code)
        try:
            await self._handle(inbound, frame, answered)
        except ProtocolError as error:
            self.refuse(error, answered, frame=frame)
        except StoreError:
            self.refuse(_failed(inbound), answered)

    def refuse(
        self, error: ProtocolError, answered: Answer = _unheard, *, frame: str | bytes | None = None
    ) -> None:
        """Answer a frame with `error` (counted); with `frame`, keep it in the log for audit, as
        for every message refused by a rule (a transport's own rules included)."""
        metrics.MESSAGES_REJECTED.labels(error.error_code).inc()
        refusal = error_envelope(self.user_id, error)
        self.deliver(refusal)
        answered(refusal)
        if frame is not None:
            self._record_rejection(frame, error)

    async def _handle(self, inbound: Inbound, frame: str | bytes, answered: Answer) -> None:
        assert inbound.room_id is not None  # every code needs a room (parse_inbound)
        access = self._access
        # Before anything is submitted: a refused message is never appended to the room.
        await access.check(
            self.identity,
            inbound.room_id,
            _action(inbound.code),
            client_msg_id=inbound.client_msg_id,
        )
        if inbound.code is InboundCode.TYPING:
            typing = bool(inbound.data.is_typing)
            await self._hub.publish_typing(self.user_id, inbound.room_id, typing)
            answered(None)
            return
        if inbound.code is InboundCode.HISTORY:
            page = await self._history(inbound, inbound.room_id)
            self.deliver(page)
            answered(page)
            return
        if inbound.code is InboundCode.AWARENESS:
            await self._relay_awareness(inbound, inbound.room_id)
            answered(None)
            return
        events = self._events_for(inbound, inbound.room_id)
        if inbound.code is InboundCode.DOC_OPEN:
            self._syncing.setdefault((inbound.room_id, str(inbound.data.doc_id)), [])
        # Nothing awaited since the check: if this opens the room, others are judged by it.
        access.opening(inbound.room_id, self.identity.authenticated)
        future = self._store.submit(events)
        self._unsettled += 1
        self._settled.clear()
        await self._in_flight.put(_InFlight(inbound, inbound.room_id, future, frame, answered))

    async def _follow(self) -> None:
        """Settle this session's appends in order, as they commit."""
        while True:
            item = await self._in_flight.get()
            await self._settle_append(item)
            self._unsettled -= 1
            if not self._unsettled:
                self._settled.set()

    async def _settle_append(self, item: _InFlight) -> None:
        try:
            results = await item.future
        except StoreError as error:
            self._syncing.pop(_opening(item), None)
            self._access.settled(item.room_id)
            if isinstance(error, AppendRefused):
                # Another process opened the room from /ws/secure in the instant between this
                # connection's check and its append; the log refused it (migration 0006).
                self._forbid(item, "The room was opened from /ws/secure first")
            else:
                self.refuse(_failed(item.inbound), item.answered)
            self._settle(item.room_id)
            return
        last = results[-1]
        if item.inbound.code is InboundCode.DOC_OPEN and not _opens(last.event, item):
            self._syncing.pop(_opening(item), None)  # a reused client_msg_id: not this open
        elif item.inbound.code is InboundCode.DOC_OPEN:
            await self._hub.dispatched_past(last.event.position)
            await self._sync_document(item, last.event.position)
            self._access.settled(item.room_id)
            self._settle(item.room_id)
            return
        if last.duplicate:
            # Seen before: answer with the original event, which everyone else already has,
            # if this connection may see it (the key is the user's, whatever the room).
            await self._answer_duplicate(item, last.event)
        # Otherwise the acknowledgement is the hub delivering the committed event to us.
        await self._hub.dispatched_past(last.event.position)
        if not last.duplicate and item.answered is not _unheard:
            rendered = render_event(last.event)
            item.answered(rendered.envelope if rendered is not None else None)
        self._access.settled(item.room_id)
        self._settle(item.room_id)

    async def _answer_duplicate(self, item: _InFlight, original: RecordedEvent) -> None:
        room = event_room(original)
        try:
            allowed = room is None or bool(await self._access.readable(self.identity, [room]))
        except StoreError:
            self.refuse(_failed(item.inbound), item.answered)
            return
        if not allowed:
            self._forbid(item, "This client_msg_id was used in a room not open to this connection")
            return
        rendered = render_event(original)
        if rendered is not None:
            self.deliver(rendered.envelope)
        item.answered(rendered.envelope if rendered is not None else None)

    def _forbid(self, item: _InFlight, message: str) -> None:
        error = ProtocolError(
            ErrorCode.FORBIDDEN, message, client_msg_id=item.inbound.client_msg_id
        )
        self.refuse(error, item.answered, frame=item.frame)

    def _events_for(self, inbound: Inbound, room_id: str) -> list[NewEvent]:
        stream = room_stream(room_id)
        events: list[NewEvent] = []
        key = (
            idempotency_key(self.user_id, inbound.client_msg_id)
            if inbound.client_msg_id is not None
            else new_event_id()
        )
        sends = inbound.code in SENDING_CODES
        if sends and not self._believes_member(room_id):
            # Sending joins the room; the join names its message, so that a resend of a message
            # already stored does not join again (a user who has left since stays out).
            implied = {**self._metadata(), "implied_by": str(key)}
            events.append(NewEvent(stream, InboundCode.JOIN, {}, implied))
        self._intend(room_id, member=inbound.code is not InboundCode.LEAVE)
        metadata = self._metadata(inbound)
        events.append(NewEvent(stream, inbound.code, self._stored_data(inbound), metadata, key))
        return events

    def _stored_data(self, inbound: Inbound) -> JsonObject:
        """What the log keeps of a message's data: as sent, but for a document's update, which
        must be a Yjs update (checked here, before anything is appended) and is kept alone."""
        if inbound.code is not InboundCode.DOC_UPDATE:
            return inbound.data_json()
        text = str(inbound.data.update)
        try:
            raw = documents.decode(text, limit=self._settings.max_message_bytes)
        except documents.NotAnUpdate as error:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, str(error), client_msg_id=inbound.client_msg_id
            ) from None
        return {"doc_id": inbound.data.doc_id, "update": documents.encode(raw)}

    # -- documents (SPEC section 7) -------------------------------------------------------------

    async def _sync_document(self, item: _InFlight, opened_at: int) -> None:
        """Answer a doc_open: what the client's state vector lacks, read up to a position at or
        after the open (whose updates the hub hands us from then on, held meanwhile); then the
        held updates that came after what was read."""
        inbound = item.inbound
        key = _opening(item)
        try:
            state_vector = (
                documents.decode_state_vector(inbound.data.state_vector)
                if inbound.data.state_vector is not None
                else None
            )
            doc = await Documents.current(
                self._store, key[0], key[1], max(opened_at, self._hub.dispatched)
            )
        except documents.NotAnUpdate as error:
            self._syncing.pop(key, None)
            invalid = ProtocolError(
                ErrorCode.INVALID_MESSAGE, str(error), client_msg_id=inbound.client_msg_id
            )
            self.refuse(invalid, item.answered)
            return
        except StoreError:
            self._syncing.pop(key, None)
            self.refuse(_failed(inbound), item.answered)
            return
        sync = envelope(
            "success",
            "doc_sync",
            self.user_id,
            {
                "doc_id": key[1],
                "update": documents.encode(doc.state.missing(state_vector)),
                "state_vector": documents.encode(doc.state.state_vector),
                "version": doc.version,
            },
            room_id=key[0],
            event_id=opened_at,
            client_msg_id=inbound.client_msg_id,
        )
        waiting = self._syncing.pop(key, [])
        self.deliver(sync)
        item.answered(sync)
        for held in waiting:
            if held.envelope.get("event_id", 0) > doc.through:
                self.deliver(held)

    async def _relay_awareness(self, inbound: Inbound, room_id: str) -> None:
        text = str(inbound.data.update)
        if len(text) > documents.MAX_AWARENESS_CHARS:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"data.update of an awareness message is at most"
                f" {documents.MAX_AWARENESS_CHARS} characters",
                client_msg_id=inbound.client_msg_id,
            )
        try:
            raw = documents.decode_awareness(text)
        except documents.NotAnUpdate as error:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, str(error), client_msg_id=inbound.client_msg_id
            ) from None
        await self._hub.publish_awareness(
            self, room_id, str(inbound.data.doc_id), documents.encode(raw)
        )

    # Membership as this session's own appends will leave it. Without this, a `chat` sent right
    # after a `leave` (or right after another chat to a new room) would be judged against the hub's
    # membership, which has not seen those appends yet: the chat would go to a room its sender
    # is no longer in, and the sender would never get its acknowledgement.

    def _believes_member(self, room_id: str) -> bool:
        intent = self._intents.get(room_id)
        return intent[0] if intent else self._hub.is_member(self.user_id, room_id)

    def _intend(self, room_id: str, *, member: bool) -> None:
        _, pending = self._intents.get(room_id, (member, 0))
        self._intents[room_id] = (member, pending + 1)

    def _settle(self, room_id: str) -> None:
        member, pending = self._intents[room_id]
        if pending <= 1:
            del self._intents[room_id]
        else:
            self._intents[room_id] = (member, pending - 1)

    def _metadata(self, inbound: Inbound | None = None) -> JsonObject:
        metadata: JsonObject = {
            "user_id": self.user_id,
            "connection_id": self.id,
            "transport": self._transport.name,
            "authenticated": self.identity.authenticated,
        }
        if inbound is not None and inbound.client_msg_id is not None:
            metadata["client_msg_id"] = inbound.client_msg_id
        if inbound is not None and inbound.timestamp is not None:
            metadata["client_timestamp"] = inbound.timestamp.isoformat()
        return metadata

    async def _history(self, inbound: Inbound, room_id: str) -> JsonObject:
        limit = inbound.data.limit or MAX_HISTORY_LIMIT
        found = await history.page(self._store, room_id, inbound.data.before, limit)
        return envelope(
            "success",
            "history",
            self.user_id,
            found.as_json(),
            room_id=room_id,
            client_msg_id=inbound.client_msg_id,
        )

    def _record_rejection(self, frame: str | bytes, error: ProtocolError) -> None:
        """Keep a refused message in the log for audit, whatever it held (what PostgreSQL cannot
        store is kept escaped); it is never delivered or replayed."""
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "backslashreplace")
        data = {
            "error_code": str(error.error_code),
            "message": storable(error.message),
            "frame": storable(text[:_REJECTED_FRAME_KEPT]),
        }
        event = NewEvent(user_stream(self.user_id), "rejected", data, self._metadata())
        self._store.submit([event])  # for audit only: nobody waits for it


def _code_of(frame: str | bytes) -> str | None:
    """The code a refused frame names, where it names one (a `chat` without its room is still
    a chat to count); read again only on this path, never for a message that parsed."""
    try:
        code = decode_object(frame).get("code")
    except ProtocolError:
        return None
    return code if isinstance(code, str) else None


# Messages that join their sender to the room when it is not in it yet.
SENDING_CODES = frozenset(
    {InboundCode.CHAT, *AI_CODES, InboundCode.DOC_OPEN, InboundCode.DOC_UPDATE}
)


def _doc_of(message: JsonObject) -> Opened | None:
    """The document a live doc_update is about, or None for anything else."""
    if message.get("code") != "doc_update":
        return None
    return (message.get("room_id"), message.get("data", {}).get("doc_id"))  # type: ignore[return-value]


def _opening(item: _InFlight) -> Opened:
    return (item.room_id, str(item.inbound.data.doc_id))


def _opens(event: RecordedEvent, item: _InFlight) -> bool:
    """Whether the log's answer to a doc_open is that open (new or resent), not an event of
    another kind that a reused client_msg_id names."""
    return (
        event.type == InboundCode.DOC_OPEN
        and event.room_id == item.room_id
        and event.data.get("doc_id") == item.inbound.data.doc_id
    )


def _rate_limited(frame: str | bytes) -> ProtocolError:
    """The refusal of a frame over the rate limit, naming the message it refused."""
    return ProtocolError(
        ErrorCode.RATE_LIMITED,
        "Too many messages; slow down",
        client_msg_id=client_msg_id_in(frame),
    )


def _failed(inbound: Inbound) -> ProtocolError:
    """The answer to a message the log could not take (the database is unreachable)."""
    return ProtocolError(
        ErrorCode.FAILED_TO_PROCESS_MESSAGE,
        "The message could not be processed; it was not delivered. Try again.",
        client_msg_id=inbound.client_msg_id,
    )
