"""Drives fuzzed frames through one live connection and checks SPEC section 6 after each.

Frames go in lockstep: one frame, then its answer, then the next. That is what lets an answer
without a `client_msg_id` (an error for a frame that is not JSON) be matched to its frame, and a
second answer to the same frame be seen. A frame that may rightly get no answer (a valid
`typing`) is followed by a sentinel, a one-event `history`, whose answer comes after any answer
the frame gets, since a connection takes its frames in order.

Checked on every frame: it is answered exactly once, by its acknowledgement or one error
envelope whose `data.details.error_code` is in SPEC section 5 (or the connection is closed with
the close code SPEC gives for it); the answer is one the frame allows (tests/fuzz/frames.py);
errors carry the connection's `user_id` and the frame's `client_msg_id`; no error shows
internals. After every batch: the server logged no error, `/healthz` answers, a fresh connection
is welcomed. At the end: every acknowledged event is in `GET /admin/events`, every refused frame
has its `rejected` event there, and every acknowledged room event is in the room's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx
import socketio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fuzz.frames import (
    ACK,
    AI_CODES,
    CMID,
    ERROR_CODES,
    SILENT,
    Context,
    Draft,
    Frame,
    leaked,
)
from tests.fuzz.tally import Tally, census

TIMEOUT = 15.0  # longest wait for any one answer (they take milliseconds; CI can be loaded)
BATCH_TIMEOUT = 120.0
# Errors that say the server, not the frame, failed: the database is up and the limiter is far.
SERVER_FAULTS = frozenset({"FAILED_TO_PROCESS_MESSAGE", "RATE_LIMITED", "AUTHENTICATION_FAILED"})
# Refusals SPEC does not record in the log (the rate limit only counts its refusals).
UNRECORDED = frozenset({"RATE_LIMITED", "FAILED_TO_PROCESS_MESSAGE"})
ROOM_EVENT_CODES = frozenset({"chat", "join", "leave"})

Envelope = dict[str, Any]


@dataclass(frozen=True)
class Closed:
    """The server ended the connection: its close code, None when it dropped it without one."""

    code: int | None
    reason: str = ""


Item = tuple[Envelope, str] | Closed


class Connection(Protocol):
    user_id: str

    async def send(self, frame: Frame) -> None: ...

    async def next(self, timeout: float) -> Item: ...

    async def acknowledged(self, frame: Frame) -> tuple[Any, ...] | None:
        """What a Socket.IO callback got for the frame (None: the transport has no callbacks)."""
        ...

    def pending(self) -> list[Item]: ...

    async def close(self) -> None: ...


def _own_words(envelope: Envelope, text: str) -> str:
    """The text of an envelope without the clients' words it carries: the stored events of a
    history page, and the text of a piece of the assistant's answer as it streams (the stored
    answer, which quotes the room as the pieces do, has an event_id and is not looked at either).
    A piece reaches every member of the room whenever the assistant gets to it, during whichever
    frame is in flight: what it quotes must not be judged against that frame."""
    data = envelope.get("data")
    if not isinstance(data, dict):
        return text
    if envelope.get("code") == "history" and "events" in data:
        return json.dumps({**envelope, "data": {**data, "events": []}})
    details = data.get("details")
    if envelope.get("code") == "logs" and isinstance(details, dict):
        if details.get("step") == "stream":
            quoted = {**data, "message": "", "details": {**details, "delta": ""}}
            return json.dumps({**envelope, "data": quoted})
    return text


def _drain(queue: asyncio.Queue[Item]) -> list[Item]:
    """What a connection received and nobody has taken yet."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class NativeConnection:
    """A `websockets` client on /ws or /ws/secure; what it receives lands in a queue."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self.user_id = ""

    @classmethod
    async def open(cls, url: str, headers: dict[str, str]) -> NativeConnection:
        ws = await connect(
            url, additional_headers=headers, max_size=None, open_timeout=TIMEOUT, close_timeout=1
        )
        connection = cls(ws)
        await connection._welcome()
        return connection

    async def _welcome(self) -> None:
        item = await self.next(TIMEOUT)
        if isinstance(item, Closed):
            raise AssertionError(f"closed instead of welcomed: {item}")
        self.user_id = item[0]["data"]["details"]["user_id"]

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                self._queue.put_nowait((_parse(text), text))
        except ConnectionClosed:
            pass
        rcvd = self._ws.protocol.close_rcvd
        self._queue.put_nowait(Closed(rcvd.code, rcvd.reason) if rcvd else Closed(None))

    async def send(self, frame: Frame) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(frame.payload)

    async def next(self, timeout: float) -> Item:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def acknowledged(self, frame: Frame) -> tuple[Any, ...] | None:
        return None

    def pending(self) -> list[Item]:
        return _drain(self._queue)

    async def close(self) -> None:
        await self._ws.close()
        await self._reader


class SocketIOConnection:
    """A python-socketio AsyncClient at /ws; each emit's callback result is kept for checking.

    Socket.IO has no close codes: the server's last envelope says the code (close_code)."""

    def __init__(self) -> None:
        self._client = socketio.AsyncClient(reconnection=False)
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._callbacks: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._client.on("message", self._on_message)
        self._client.on("disconnect", self._on_disconnect)
        self.user_id = ""

    @classmethod
    async def open(
        cls, http: str, headers: dict[str, str], auth: dict[str, Any] | None = None
    ) -> SocketIOConnection:
        connection = cls()
        await connection._client.connect(
            http,
            socketio_path="/ws",
            transports=["websocket"],
            headers=headers,
            auth=auth,
            wait_timeout=TIMEOUT,
        )
        item = await connection.next(TIMEOUT)
        if isinstance(item, Closed):
            raise AssertionError(f"closed instead of welcomed: {item}")
        connection.user_id = item[0]["data"]["details"]["user_id"]
        return connection

    async def _on_message(self, payload: Any = None, *extra: Any) -> None:
        text = json.dumps(payload)
        envelope = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(envelope, dict):
            self._queue.put_nowait(({"unparseable": text[:200]}, text))
            return
        data = envelope.get("data")
        details = data.get("details") if isinstance(data, dict) else None
        if envelope.get("code") == "system" and isinstance(details, dict):
            if "close_code" in details:
                self._queue.put_nowait(Closed(details["close_code"], str(details.get("reason"))))
                return
        self._queue.put_nowait((envelope, text))

    async def _on_disconnect(self, *reason: Any) -> None:
        self._queue.put_nowait(Closed(None, "disconnected"))

    async def send(self, frame: Frame) -> None:
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

        def answered(*args: Any) -> None:
            if not future.done():
                future.set_result(args)

        self._callbacks[id(frame)] = future
        draft = frame.draft
        event, args = (draft.event, draft.args) if draft.kind == "event" else ("message", None)
        data = args if args is not None else (frame.payload,)
        with contextlib.suppress(socketio.exceptions.BadNamespaceError):
            await self._client.emit(event, data=data, callback=answered)

    async def next(self, timeout: float) -> Item:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def acknowledged(self, frame: Frame) -> tuple[Any, ...] | None:
        future = self._callbacks.pop(id(frame))
        return await asyncio.wait_for(future, TIMEOUT)

    def forget(self, frame: Frame) -> None:
        self._callbacks.pop(id(frame), None)

    def pending(self) -> list[Item]:
        return _drain(self._queue)

    async def close(self) -> None:
        await self._client.disconnect()


def _parse(text: str) -> Envelope:
    try:
        value = json.loads(text)
    except ValueError:
        return {"unparseable": text[:200]}
    return value if isinstance(value, dict) else {"unparseable": text[:200]}


class ServerErrors(logging.Handler):
    """Records at ERROR and above logged by the server's thread (tracebacks, lost tasks)."""

    def __init__(self, thread_id: int | None) -> None:
        super().__init__(logging.ERROR)
        self.thread_id = thread_id
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.records.append(record)

    def take(self) -> list[str]:
        taken, self.records = self.records, []
        return [_describe_record(record) for record in taken]

    @contextlib.contextmanager
    def installed(self) -> Any:
        loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


def _describe_record(record: logging.LogRecord) -> str:
    cause = ""
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        cause = f" ({type(error).__name__}: {str(error)[:120]})"
    return f"{record.name}: {record.getMessage()[:200]}{cause}"


@dataclass
class Acknowledged:
    event_id: int
    code: str
    room: str | None
    frame: Frame
    user: str


@dataclass
class Harness:
    """One fuzzing client (reconnected when the server rightly closes it) and its checks."""

    name: str
    ctx: Context
    open_connection: Callable[[str], Awaitable[Connection]]  # as the user named
    probe: Callable[[], Awaitable[Connection]]
    http: httpx.AsyncClient
    admin_token: str
    max_bytes: int
    tally: Tally
    errors_logged: ServerErrors
    prefix: str
    connection: Connection | None = None
    user: str = ""  # this batch's user
    users: set[str] = field(default_factory=set)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    answered: dict[str, str | None] = field(default_factory=dict)  # client_msg_id -> code
    acknowledged: list[Acknowledged] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # error codes answered
    refused_events: Counter[str] = field(default_factory=Counter)  # of which Socket.IO events
    problems: list[str] = field(default_factory=list)  # this batch's
    sent_before: list[str] = field(default_factory=list)  # labels of this batch's earlier frames

    # -- one batch ---------------------------------------------------------------------------

    async def run_batch(self, drafts: list[Draft]) -> None:
        """Send the drafts in lockstep; raise AssertionError listing what broke SPEC."""
        self.problems = []
        async with asyncio.timeout(BATCH_TIMEOUT):
            await self.new_user()
            self.sent_before = []
            for draft in drafts:
                await self.exchange(draft)
                self.sent_before.append(draft.label)
            self.strays()
            await self.drop_connection()
            await self.check_health()
        if self.problems and not census():
            raise AssertionError("\n".join(self.problems))

    def problem(self, kind: str, frame: Frame | None, description: str) -> None:
        shown = f" after {frame.draft!r}" if frame is not None else ""
        if frame is not None and self.sent_before:
            shown += f" (the batch sent before it: {'; '.join(self.sent_before)})"
        self.tally.fail(kind, f"{description}{shown}")
        self.problems.append(f"[{kind}] {description}{shown}")

    async def new_user(self) -> None:
        """A user of its own for each batch: no membership, no earlier client_msg_id."""
        await self.drop_connection()
        self.user = f"{self.prefix}-u{next(self.counter)}"
        self.users.add(self.user)
        connection = await self.current()
        if connection.user_id != self.user:
            self.problem("wrong", None, f"welcomed as {connection.user_id}, not {self.user}")

    async def current(self) -> Connection:
        if self.connection is None:
            self.connection = await self.open_connection(self.user)
        return self.connection

    def fresh_cmid(self) -> str:
        return f"{self.prefix}-{next(self.counter)}"

    def frame_for(self, draft: Draft) -> Frame | None:
        if draft.kind != "resend":
            return draft.render(self.fresh_cmid(), self.user)
        chats = [ack for ack in self.acknowledged if ack.code == "chat" and ack.user == self.user]
        if not chats:
            return None
        return chats[-1].frame

    async def exchange(self, draft: Draft) -> None:
        frame = self.frame_for(draft)
        if frame is None:
            return
        resent = self._original(frame) if draft.kind == "resend" else None
        allowed = frame.allowed(self.max_bytes) if resent is None else frozenset({ACK})
        connection = await self.current()
        if isinstance(connection, SocketIOConnection) and _packet_size(frame) > self.max_bytes:
            # Over WebSocket, Socket.IO's packet over the limit is closed with 1009 by the server's
            # WebSocket layer (uvicorn's ws_max_size), which a Socket.IO client sees as a bare
            # disconnect; the server logging nothing is checked after the batch.
            allowed |= {"close:None"}
        self.tally.frames += 1
        await connection.send(frame)
        sentinel = None
        if SILENT in allowed or draft.kind == "event" or frame.draft.code == "typing":
            sentinel = self.sentinel()
            await connection.send(sentinel)
        outcome, answer = await self.answer_of(connection, frame, sentinel)
        self.tally.answers[outcome] += 1
        if outcome.startswith("close:"):
            await self.drop_connection()
            if outcome not in allowed:
                self.problem("crashes", frame, f"the server closed the connection ({outcome})")
            return
        if outcome == "silence":
            return
        if outcome not in allowed:
            self.problem(
                "wrong", frame, f"answered {outcome}, allowed {sorted(allowed)}: {answer!r:.300}"
            )
        if answer is not None:
            self.record(frame, outcome, answer, resent)
        await self.check_callback(connection, frame, answer, outcome)

    def _original(self, frame: Frame) -> Acknowledged:
        return next(ack for ack in self.acknowledged if ack.frame is frame)

    def sentinel(self) -> Frame:
        body = {"code": "history", "room_id": self.ctx.rooms[0], "data": {"limit": 1}}
        template = json.dumps({**body, "client_msg_id": CMID})
        draft = Draft("sentinel", template, frozenset({ACK}), code="history", echo=True)
        return draft.render(f"{self.prefix}-sentinel-{next(self.counter)}", self.user)

    async def answer_of(
        self, connection: Connection, frame: Frame, sentinel: Frame | None
    ) -> tuple[str, Envelope | None]:
        """Read until the frame (and its sentinel) are answered; the frame's outcome."""
        answer: Envelope | None = None
        outcome: str | None = None
        sentinel_done = sentinel is None
        try:
            async with asyncio.timeout(TIMEOUT):
                while outcome is None or not sentinel_done:
                    item = await connection.next(TIMEOUT)
                    if isinstance(item, Closed):
                        if isinstance(connection, SocketIOConnection):
                            connection.forget(frame)
                        return f"close:{item.code}", None
                    envelope, text = item
                    verdict = self.classify(envelope, text, frame, sentinel)
                    if verdict == "sentinel":
                        sentinel_done = True
                        if outcome is None:
                            outcome = SILENT
                    elif verdict == "answer":
                        if outcome is not None:
                            self.problem("wrong", frame, f"a second answer: {text:.300}")
                            continue
                        answer = envelope
                        outcome = self.outcome(envelope)
        except TimeoutError:
            waited = "its answer" if outcome is None else "the sentinel's answer"
            self.problem("silences", frame, f"no answer within {TIMEOUT} s (waiting for {waited})")
            await self.drop_connection()
            return "silence", None
        assert outcome is not None
        return outcome, answer

    def classify(self, envelope: Envelope, text: str, frame: Frame, sentinel: Frame | None) -> str:
        """What an envelope is to the frame in flight: its answer, the sentinel's, or else."""
        self.check_envelope(envelope, text, frame)
        cmid = envelope.get("client_msg_id")
        error = _is_error(envelope)
        if sentinel is not None and cmid == sentinel.cmid:
            if not _is_ack(envelope, "history", self.user):
                self.problem("wrong", frame, f"the sentinel was refused: {text:.300}")
            return "sentinel"
        if frame.cmid is not None and cmid == frame.cmid:
            if error or _is_ack(envelope, frame.draft.code, self.user):
                return "answer"
            return "follow-up"  # the assistant's answer to a request, its progress logs
        if error:
            if cmid is None:
                return "answer"
            if cmid in self.answered:
                self.problem("wrong", frame, f"a late or second answer to {cmid}: {text:.300}")
                return "late"
            if frame.cmid is None:
                return "answer"
            self.problem("wrong", frame, f"an error naming another client_msg_id: {text:.300}")
            return "late"
        if cmid in self.answered and _is_ack(envelope, self.answered[cmid], self.user):
            self.problem("wrong", frame, f"a second acknowledgement of {cmid}: {text:.300}")
        return "other"

    def outcome(self, envelope: Envelope) -> str:
        if _is_error(envelope):
            return str(_details(envelope).get("error_code"))
        return ACK

    def check_envelope(self, envelope: Envelope, text: str, frame: Frame) -> None:
        if "unparseable" in envelope:
            self.problem("wrong", frame, f"the server sent something that is not JSON: {text:.200}")
            return
        if envelope.get("status") not in ("success", "error", "pending"):
            self.problem("wrong", frame, f"an envelope without a SPEC status: {text:.300}")
        if envelope.get("status") == "error" or envelope.get("event_id") is None:
            # Whatever the server says of its own (not a stored event echoing a client's data:
            # a history page's events are stored ones, the assistant's answers quoting the
            # room's earlier messages among them).
            found = leaked(_own_words(envelope, text), frame.payload)
            if found is not None:
                self.problem("leaks", frame, f"{found!r} in {text:.400}")
        if not _is_error(envelope):
            return
        error_code = _details(envelope).get("error_code")
        if error_code not in ERROR_CODES:
            self.problem("wrong", frame, f"error_code {error_code!r} is not in SPEC: {text:.300}")
        elif error_code in SERVER_FAULTS:
            self.problem("crashes", frame, f"{error_code} while the server is healthy: {text:.300}")
        if envelope.get("user_id") != self.user:
            self.problem("wrong", frame, f"an error not addressed to the user: {text:.300}")

    def record(
        self, frame: Frame, outcome: str, answer: Envelope, resent: Acknowledged | None
    ) -> None:
        draft = frame.draft
        cmid = answer.get("client_msg_id")
        if frame.cmid is not None:
            self.answered[frame.cmid] = draft.code
        if outcome != ACK:
            # A frame answered INVALID_JSON was not read as JSON: it named no client_msg_id.
            named = draft.echo and outcome != "INVALID_JSON"
            if named and frame.cmid is not None and cmid != frame.cmid:
                self.problem("wrong", frame, f"the error does not name client_msg_id {frame.cmid}")
            if outcome not in UNRECORDED:
                self.refused[outcome] += 1
                if draft.kind == "event":
                    self.refused_events[outcome] += 1
            return
        if frame.cmid is not None and cmid != frame.cmid:
            self.problem("wrong", frame, f"the acknowledgement lacks client_msg_id {frame.cmid}")
        if draft.message is not None and draft.code in ("chat", *AI_CODES):
            sent = answer.get("data", {}).get("message") if draft.code == "chat" else draft.message
            if sent != draft.message:
                self.problem("wrong", frame, f"the message came back as {sent!r:.200}")
        if draft.code == "history":
            return
        event_id = answer.get("event_id")
        if not isinstance(event_id, int):
            self.problem("wrong", frame, f"an acknowledgement without an event_id: {answer!r:.300}")
            return
        if resent is not None:
            if event_id != resent.event_id:
                self.problem(
                    "wrong", frame, f"the resend got event {event_id}, not {resent.event_id}"
                )
            return
        self.tally.acked += 1
        ack = Acknowledged(event_id, str(draft.code), draft.room, frame, self.user)
        self.acknowledged.append(ack)

    async def check_callback(
        self, connection: Connection, frame: Frame, answer: Envelope | None, outcome: str
    ) -> None:
        """Socket.IO: the emit's callback gets the same envelope as the answer (None if none)."""
        if not isinstance(connection, SocketIOConnection):
            return
        if frame.draft.kind == "event":
            connection.forget(frame)
            return
        try:
            got = await connection.acknowledged(frame)
        except TimeoutError:
            self.problem("silences", frame, "the Socket.IO callback was never called")
            return
        value = got[0] if got else None
        expected = answer if outcome != SILENT else None
        if not _same(value, expected):
            self.problem(
                "wrong", frame, f"the Socket.IO callback got {_difference(value, expected)}"
            )

    async def drop_connection(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.connection.close()
        self.connection = None

    # -- the server as a whole ---------------------------------------------------------------

    async def check_health(self) -> None:
        for record in self.errors_logged.take():
            self.problem("crashes", None, f"the server logged an error: {record}")
        try:
            response = await self.http.get("/healthz")
            if response.status_code != 200:
                self.problem("crashes", None, f"/healthz answered {response.status_code}")
        except httpx.HTTPError as error:
            self.problem("crashes", None, f"/healthz failed: {error!r}")
        try:
            probe = await self.probe()
            await probe.close()
        except Exception as error:
            self.problem("crashes", None, f"a fresh connection was not welcomed: {error!r}")

    async def finish(self) -> list[str]:
        """End of the run: a last acknowledged chat, then the log, the audit and the history."""
        self.problems = []
        async with asyncio.timeout(BATCH_TIMEOUT):
            await self.last_word()
            await self.check_health()
            events = await self.audit_log()
            if events is not None:
                self.check_log(events)
            await self.check_history()
        return self.problems

    async def last_word(self) -> None:
        """A chat acknowledged after every earlier append was submitted: the audit of refused
        frames (appended without waiting) is committed before it, in submission order."""
        body = {"code": "chat", "room_id": self.ctx.rooms[0], "data": {"message": "last"}}
        template = json.dumps({**body, "client_msg_id": CMID})
        draft = Draft("last word", template, frozenset({ACK}), code="chat", room=self.ctx.rooms[0])
        await self.new_user()
        await self.exchange(replace(draft, message="last"))
        self.strays()
        await self.drop_connection()

    def strays(self) -> None:
        """What came after every frame of the batch was answered must answer nothing."""
        if self.connection is None:
            return
        for item in self.connection.pending():
            if isinstance(item, tuple):
                self.stray(*item)

    def stray(self, envelope: Envelope, text: str) -> None:
        cmid = envelope.get("client_msg_id")
        if _is_error(envelope):
            self.problem("wrong", None, f"an error after every frame was answered: {text:.300}")
        elif cmid in self.answered and _is_ack(envelope, self.answered[cmid], self.user):
            self.problem("wrong", None, f"a second acknowledgement of {cmid}: {text:.300}")

    async def audit_log(self) -> list[Envelope] | None:
        events: list[Envelope] = []
        after = 0
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        while True:
            response = await self.http.get(
                "/admin/events", params={"after": after, "limit": 1000}, headers=headers
            )
            if response.status_code != 200:
                self.problem(
                    "crashes", None, f"GET /admin/events?after={after}: {response.status_code}"
                )
                return None
            page = response.json()
            events.extend(page["events"])
            if page["next_after"] is None:
                return events
            after = page["next_after"]

    def check_log(self, events: list[Envelope]) -> None:
        logged = {event["event_id"] for event in events}
        for ack in self.acknowledged:
            if ack.event_id not in logged:
                description = f"event {ack.event_id} was acknowledged, not logged"
                self.problem("acked_missing", ack.frame, description)
        audited = Counter(
            event["code"]
            for event in events
            if event["type"] == "rejected" and event["user_id"] in self.users
        )
        for code, count in (self.refused - audited).items():
            events = self.refused_events[code]
            among = (
                f" ({events} of the {code} refusals answered Socket.IO events)" if events else ""
            )
            self.problem(
                "unaudited", None, f"{count} frames refused {code} have no rejected event{among}"
            )
        for code, count in (audited - self.refused).items():
            self.problem("wrong", None, f"{count} rejected events {code} for frames never refused")

    async def check_history(self) -> None:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        for room in self.ctx.rooms:
            seen: set[int] = set()
            params: dict[str, Any] = {"limit": 100}
            while True:
                response = await self.http.get(
                    f"/rooms/{room}/messages", params=params, headers=headers
                )
                if response.status_code != 200:
                    self.tally.server_errors += response.status_code >= 500
                    self.problem(
                        "crashes",
                        None,
                        f"GET /rooms/{room}/messages {params}: {response.status_code}",
                    )
                    break
                page = response.json()
                seen.update(event["event_id"] for event in page["events"])
                if not page["has_more"] or not page["events"]:
                    break
                params = {"limit": 100, "before": page["events"][0]["event_id"]}
            for ack in self.acknowledged:
                if ack.room == room and ack.code in ROOM_EVENT_CODES and ack.event_id not in seen:
                    self.problem(
                        "behind", ack.frame, f"event {ack.event_id} is not in {room}'s history"
                    )


def _same(got: Any, expected: Any) -> bool:
    """Equal as JSON values. A number is compared as a double: what the callback gets is the
    append's own value (-1.5e+89), what is delivered is read back from PostgreSQL, whose jsonb
    prints it in plain digits (an integer of 90 digits)."""
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    numbers = (int, float)
    if isinstance(got, numbers) and isinstance(expected, numbers):
        if isinstance(got, bool) or isinstance(expected, bool):
            return got is expected
        return got == expected or float(got) == float(expected)
    return bool(got == expected)


def _difference(got: Any, expected: Any) -> str:
    """Where two envelopes differ, shortly: the first differing field, both values."""
    if isinstance(got, dict) and isinstance(expected, dict):
        for key in sorted(set(got) | set(expected), key=str):
            if got.get(key) != expected.get(key):
                inner = _difference(got.get(key), expected.get(key))
                return f"{key}: {inner}"
    return f"{got!r:.200} where the answer was {expected!r:.200}"


def _packet_size(frame: Frame) -> int:
    """The bytes of the Socket.IO packet (`42["message",...]`) that carries a text frame."""
    if isinstance(frame.payload, bytes):
        return len(frame.payload)
    return len(json.dumps(["message", frame.payload]).encode()) + 2


def _details(envelope: Envelope) -> dict[str, Any]:
    data = envelope.get("data")
    details = data.get("details") if isinstance(data, dict) else None
    return details if isinstance(details, dict) else {}


def _is_error(envelope: Envelope) -> bool:
    return envelope.get("status") == "error" and envelope.get("code") == "system"


def _is_ack(envelope: Envelope, code: str | None, user_id: str) -> bool:
    """Whether an envelope is the acknowledgement SPEC section 4 gives the code."""
    status, answered = envelope.get("status"), envelope.get("code")
    if code == "chat":
        return (
            answered == "chat_response"
            and status == "success"
            and envelope.get("user_id") == user_id
        )
    if code in AI_CODES:
        return status == "pending" and answered == code
    if code in ("join", "leave"):
        return (
            answered == "system"
            and status == "success"
            and _details(envelope).get("action") == code
        )
    if code == "history":
        return answered == "history" and status == "success"
    return False
