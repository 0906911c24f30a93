"""haitch at work: the consumer of the log that answers AI requests.

A request (`haitch_chat`, `idea`, `documentation`, `engineering`) is appended and acknowledged with
`pending` like any message; this handler finds it in the log and answers it:

    request in the log ──▶ logs: context read ──▶ pieces as they stream (not stored)
                       ──▶ the answer appended to the room (or the failure to the requester)
                       ──▶ for a document, in the same append: the collaborative document it
                           opens (a doc_update seeding it, before the answer naming it in
                           data.details.doc_id) and a notification to the requester

What the model reads of the room's generated documents is their text as it stands at the
request, edits made together since included (SPEC section 7); a request with `data.doc_id` asks
about that document, and reads it too.

One process answers at a time (a Runner runs it as an exclusive consumer, productflo.consumers):
the one holding a PostgreSQL advisory lock on a connection of its own. When that process dies,
PostgreSQL drops the connection and the lock with it, and another process (or the restarted one)
takes over from the checkpoint.

Each request runs in its own task, at most `ai_concurrency` at once in the process and
`ai_per_user` per requester, so a slow model holds up neither the connection that asked nor
anyone else's requests. The checkpoint (a row of `projection_checkpoints`) moves past a request
only once its answer is in the log, so a request acknowledged before a crash is answered after the
restart; the answer's event id derives from the request's, so it is stored once even if two
processes ever answered the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence

from productflo import documents, metrics
from productflo.ai.interface import AI_KINDS, AIRequest, ContextMessage, Provider, ProviderError
from productflo.ai.prompts import ASSISTANT_ID, document_title
from productflo.envelopes import (
    ANSWER_CODES,
    ANSWER_TYPES,
    Audience,
    Status,
    answer_type,
    envelope,
)
from productflo.errors import ErrorCode, StoreError, StoreUnavailable
from productflo.events.checkpoints import advance_checkpoint, checkpoint, create_checkpoint
from productflo.events.models import JsonObject, NewEvent, RecordedEvent, room_stream, user_stream
from productflo.events.store import EventStore
from productflo.hub import Hub
from productflo.projections.documents import Documents
from productflo.settings import Settings

log = logging.getLogger(__name__)

NAME = "handler:ai"  # its lock is "productflo:handler:ai", as in earlier releases
_NAMESPACE = uuid.UUID("3c0d8f4e-71a2-4b5f-9e6d-2a8b1c7f0e93")
CONTEXT_TYPES = ("chat", *AI_KINDS, *ANSWER_TYPES)
PIECE_INTERVAL = 0.05  # seconds: streamed text is sent at most this often per answer ...
# ... and at most this many bytes of JSON at a time: a piece travels twice in its envelope
# (message, details.delta), and a NOTIFY payload holds 8000 bytes.
PIECE_BYTES = 2500
RETRY_SECONDS = 1.0  # between attempts to store an answer while the database is away
ATTEMPTS = 3  # at a request that fails for another reason than the provider


def answer_id(request: RecordedEvent) -> uuid.UUID:
    """The event id of the answer to `request`: the same on every attempt, in every process."""
    return uuid.uuid5(_NAMESPACE, f"{request.event_id}:answer")


def document_id(request: RecordedEvent) -> str:
    """The id of the collaborative document a documentation request's answer opens: the same
    for every attempt at answering it."""
    return f"haitch-{request.position}"


def is_request(event: RecordedEvent) -> bool:
    return event.type in AI_KINDS and event.room_id is not None and event.user_id is not None


class Assistant:
    """A consumer of the log (exclusive: run by one process at a time, productflo.consumers)."""

    name = NAME
    exclusive = True

    def __init__(self, store: EventStore, hub: Hub, settings: Settings, provider: Provider) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings
        self.provider = provider
        self._slots = asyncio.Semaphore(settings.ai_concurrency)
        self._per_user: dict[str, _Turns] = {}  # requesters with requests in hand, only
        self._answering: dict[int, asyncio.Task[None]] = {}  # request position -> its task
        self._saving: set[asyncio.Task[None]] = set()
        self._read_to = 0
        self._saved = 0
        self.leading = asyncio.Event()

    # -- as a consumer -------------------------------------------------------------------------

    async def prepare(self, store: EventStore) -> None:
        # The first start in a database begins at the head: requests stored by a release that had
        # no assistant (acknowledged, and told so) are not answered months later, all at once.
        await create_checkpoint(store.pool, NAME, at_head=True)

    async def resume(self, store: EventStore) -> int:
        self._read_to = self._saved = await checkpoint(store.pool, NAME)
        self.leading.set()
        return self._read_to

    async def take(self, store: EventStore, events: Sequence[RecordedEvent]) -> int:
        for event in events:
            if is_request(event):
                self._begin(event)
        self._read_to = events[-1].position
        await self._save_checkpoint()
        return self._read_to

    async def abandon(self) -> None:
        """Leadership lost (or the process stopping): stop answering; whoever leads next starts
        from the checkpoint. The provider stays open (whoever made it closes it)."""
        self.leading.clear()
        tasks = list(self._answering.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._answering.clear()

    # -- the checkpoint ------------------------------------------------------------------------

    def _begin(self, request: RecordedEvent) -> None:
        task = asyncio.create_task(self._answer(request), name=f"ai-answer-{request.position}")
        self._answering[request.position] = task
        metrics.AI_IN_FLIGHT.inc()
        task.add_done_callback(lambda _: self._finished(request.position))

    def _finished(self, position: int) -> None:
        self._answering.pop(position, None)
        metrics.AI_IN_FLIGHT.dec()
        if self.leading.is_set():
            saving = asyncio.get_running_loop().create_task(self._save_checkpoint())
            self._saving.add(saving)  # referenced until done, so it is not collected midway
            saving.add_done_callback(self._saving.discard)

    async def _save_checkpoint(self) -> None:
        """Everything before the oldest request still being answered is done."""
        done = min(self._answering, default=self._read_to + 1) - 1
        done = min(done, self._read_to)
        if done <= self._saved:
            return
        self._saved = done
        with contextlib.suppress(Exception):  # a later save, or the next leader, catches up
            await advance_checkpoint(self._store.pool, NAME, done)

    # -- one request ---------------------------------------------------------------------------

    async def _answer(self, request: RecordedEvent) -> None:
        assert request.user_id is not None
        async with self._turn(request.user_id), self._slots:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    await self._answer_once(request)
                    return
                except Exception:  # the database, most likely: try again, then say so
                    log.warning(
                        "AI request %d: attempt %d failed", request.position, attempt, exc_info=True
                    )
                    if attempt < ATTEMPTS:
                        await asyncio.sleep(RETRY_SECONDS * attempt)
            # Never leave it unanswered: the checkpoint is about to move past it.
            metrics.AI_ANSWERS.labels(request.type, "error").inc()
            reason = "The request could not be answered. Please ask again."
            try:
                await self._store_answer(
                    [self._failure(request, ErrorCode.FAILED_TO_PROCESS_MESSAGE, reason)]
                )
            except StoreError:
                log.exception("AI request %d: its failure could not be stored", request.position)

    async def _answer_once(self, request: RecordedEvent) -> None:
        if await self._store.contains(answer_id(request)):
            return  # answered before a crash, and the checkpoint did not move past it yet
        started = time.monotonic()
        asked = await self._request(request)
        await self._progress(request, "context", _context_note(asked))
        model = f"Asking {self.provider.name} ({self.provider.model})"
        await self._progress(request, "model", model)
        try:
            text = await self._stream(request, asked)
        except ProviderError as failure:
            metrics.AI_ANSWERS.labels(request.type, "error").inc()
            log.warning("AI request %d failed: %s", request.position, failure)
            events = [self._failure(request, ErrorCode.AI_PROVIDER_ERROR, str(failure))]
        else:
            metrics.AI_ANSWERS.labels(request.type, "success").inc()
            events = self._success(request, asked, text)
        await self._store_answer(events)
        metrics.AI_SECONDS.labels(request.type).observe(time.monotonic() - started)

    @contextlib.asynccontextmanager
    async def _turn(self, user_id: str) -> AsyncIterator[None]:
        """One of the requester's `ai_per_user` slots; forgotten once none is held or awaited."""
        turns = self._per_user.setdefault(user_id, _Turns(self._settings.ai_per_user))
        turns.holders += 1
        try:
            async with turns.semaphore:
                yield
        finally:
            turns.holders -= 1
            if not turns.holders:
                del self._per_user[user_id]

    async def _request(self, request: RecordedEvent) -> AIRequest:
        """The request with the room's recent conversation before it."""
        assert request.room_id is not None and request.user_id is not None
        earlier = await self._store.read_stream(
            room_stream(request.room_id),
            before=request.position,
            limit=self._settings.ai_context_messages,
            types=CONTEXT_TYPES,
        )
        files = request.data.get("attached_files")
        message = request.data.get("message")
        said = [await self._said(event, request.position) for event in earlier]
        asked_about = request.data.get("doc_id")
        if isinstance(asked_about, str):  # a request about one of the room's documents
            said.append(await self._document_said(request.room_id, asked_about, request.position))
        return AIRequest(
            kind=request.type,
            user_id=request.user_id,
            room_id=request.room_id,
            message=message if isinstance(message, str) else "",
            attached_files=tuple(f for f in files if isinstance(f, str))
            if isinstance(files, list)
            else (),
            context=tuple(message for message in said if message.text),
        )

    async def _said(self, event: RecordedEvent, upto: int) -> ContextMessage:
        """One earlier message of the room as the model sees it; a generated document as its
        text stands now (edited together since, it may be), as of the request."""
        details = event.data.get("details")
        doc = details.get("doc_id") if isinstance(details, dict) else None
        if event.type in ANSWER_TYPES and isinstance(doc, str) and event.room_id is not None:
            return await self._document_said(event.room_id, doc, upto)
        return _said(event)

    async def _document_said(self, room_id: str, doc_id: str, upto: int) -> ContextMessage:
        document = await Documents.current(self._store, room_id, doc_id, upto)
        return ContextMessage(ASSISTANT_ID, document.state.text)

    async def _stream(self, request: RecordedEvent, asked: AIRequest) -> str:
        """The whole answer; its pieces go to the room as they come, a few at a time."""
        pieces: list[str] = []
        pending: list[str] = []
        sent = 0
        last = time.monotonic()

        async def flush() -> None:
            nonlocal sent, last
            text = "".join(pending)
            pending.clear()
            for chunk in _chunks(text, PIECE_BYTES):
                await self._publish_piece(request, chunk, sent)
                sent += 1
            last = time.monotonic()

        async with contextlib.aclosing(_generator(self.provider.stream(asked))) as stream:
            async for piece in stream:
                piece = piece.replace("\x00", "")  # jsonb cannot hold U+0000: it would never store
                pieces.append(piece)
                pending.append(piece)
                if time.monotonic() - last >= PIECE_INTERVAL:
                    await flush()
        if pending:
            await flush()
        return "".join(pieces)

    async def _publish_piece(self, request: RecordedEvent, text: str, sequence: int) -> None:
        """A piece of the answer as it streams, to the room: a `logs` envelope (status pending),
        never the answer's own code, so that clients written for the seed, which switch on
        `code` alone, do not take a piece for an answer."""
        assert request.room_id is not None
        details = {
            "step": "stream",
            "in_reply_to": request.position,
            "code": _code(request),
            "delta": text,
            "sequence": sequence,
            "sender": ASSISTANT_ID,
        }
        await self._log(request, Audience("room", request.room_id), "pending", text, details)

    async def _progress(self, request: RecordedEvent, step: str, text: str) -> None:
        """A `logs` envelope for the requester: what the assistant is doing."""
        assert request.user_id is not None
        details = {"step": step, "in_reply_to": request.position, "code": _code(request)}
        await self._log(request, Audience("user", request.user_id), "success", text, details)

    async def _log(
        self,
        request: RecordedEvent,
        audience: Audience,
        status: Status,
        text: str,
        details: JsonObject,
    ) -> None:
        user = ASSISTANT_ID if audience.kind == "room" else request.user_id
        message = envelope(
            status,
            "logs",
            user,
            {"message": text, "details": details},
            room_id=request.room_id,
            client_msg_id=_client_msg_id(request),
        )
        with contextlib.suppress(Exception):  # a courtesy: the stored answer is what counts
            await self._hub.publish(audience, message)

    def _success(self, request: RecordedEvent, asked: AIRequest, text: str) -> list[NewEvent]:
        assert request.room_id is not None and request.user_id is not None
        data: JsonObject = {
            "message": text,
            "sender": ASSISTANT_ID,
            "in_reply_to": {
                "event_id": request.position,
                "user_id": request.user_id,
                "message": asked.message,
            },
            "provider": self.provider.name,
            "model": self.provider.model,
        }
        seed: list[NewEvent] = []
        notify: list[NewEvent] = []
        if request.type == "documentation":
            title = document_title(asked, text)
            doc_id = document_id(request)
            data["document"] = {"title": title, "format": "markdown", "content": text}
            data["message"] = f"Document ready: {title}"
            data["details"] = {"doc_id": doc_id}
            # The document opens as a collaborative one of the room, its text the answer's.
            seed.append(self._seed_document(request, doc_id, text))
            notify.append(self._document_ready(request, title, doc_id))
        answer = NewEvent(
            room_stream(request.room_id),
            answer_type(request.type),
            data,
            self._metadata(request, ASSISTANT_ID),
            answer_id(request),
        )
        return [*seed, answer, *notify]

    def _seed_document(self, request: RecordedEvent, doc_id: str, text: str) -> NewEvent:
        assert request.room_id is not None
        return NewEvent(
            room_stream(request.room_id),
            "doc_update",
            {"doc_id": doc_id, "update": documents.encode(documents.seeded(text))},
            self._metadata(request, ASSISTANT_ID),
            uuid.uuid5(_NAMESPACE, f"{request.event_id}:document"),
        )

    def _document_ready(self, request: RecordedEvent, title: str, doc_id: str) -> NewEvent:
        assert request.user_id is not None
        details = {
            "kind": "document",
            "room_id": request.room_id,
            "title": title,
            "doc_id": doc_id,
            "in_reply_to": request.position,
        }
        return NewEvent(
            user_stream(request.user_id),
            "notification",
            {"message": f"Your document is ready: {title}", "details": details},
            self._metadata(request, ASSISTANT_ID),
            uuid.uuid5(_NAMESPACE, f"{request.event_id}:notification"),
        )

    def _failure(self, request: RecordedEvent, code: ErrorCode, reason: str) -> NewEvent:
        assert request.user_id is not None
        details = {
            "error_code": str(code),
            "message": reason,
            "room_id": request.room_id,
            "in_reply_to": request.position,
        }
        return NewEvent(
            user_stream(request.user_id),
            answer_type(request.type),
            {"message": reason, "details": details},
            self._metadata(request, ASSISTANT_ID),
            answer_id(request),
        )

    def _metadata(self, request: RecordedEvent, user_id: str) -> JsonObject:
        metadata: JsonObject = {
            "user_id": user_id,
            "causation_id": str(request.event_id),
            "provider": self.provider.name,
            "model": self.provider.model,
        }
        if (echo := _client_msg_id(request)) is not None:
            metadata["client_msg_id"] = echo
        return metadata

    async def _store_answer(self, events: list[NewEvent]) -> None:
        """Keep trying while the database is away: the answer is all the user is waiting for.
        An answer the log refuses (not an outage) is not retried: _answer answers with an error."""
        while True:
            try:
                await self._store.append(events)
                return
            except StoreUnavailable:
                log.warning("could not store an AI answer; retrying", exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)


class _Turns:
    """A requester's slots, and how many of their requests hold or wait for one."""

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.holders = 0


def _said(event: RecordedEvent) -> ContextMessage:
    """One earlier message of the room as the model sees it."""
    if event.type in ANSWER_TYPES:
        document = event.data.get("document")
        text = document.get("content") if isinstance(document, dict) else event.data.get("message")
        return ContextMessage(ASSISTANT_ID, text if isinstance(text, str) else "")
    text = event.data.get("message")
    return ContextMessage(event.user_id or "someone", text if isinstance(text, str) else "")


def _context_note(asked: AIRequest) -> str:
    files = f" and {len(asked.attached_files)} attached file(s)" if asked.attached_files else ""
    return f"Read {len(asked.context)} recent message(s) of the room{files}"


def _code(request: RecordedEvent) -> str:
    return ANSWER_CODES[answer_type(request.type)]


def _client_msg_id(request: RecordedEvent) -> str | None:
    echo = request.metadata.get("client_msg_id")
    return echo if isinstance(echo, str) else None


def _chunks(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of at most `size` bytes as JSON escapes them (a NOTIFY payload is bounded
    in bytes, and an emoji escapes to twelve)."""
    start, used = 0, 0
    for end, char in enumerate(text):
        cost = len(json.dumps(char)) - 2
        if used + cost > size and end > start:
            yield text[start:end]
            start, used = end, 0
        used += cost
    if start < len(text):
        yield text[start:]


async def _generator(pieces: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """Any async iterator as an async generator that, when closed early (the task cancelled),
    closes the provider's stream too, which releases its HTTP connection."""
    try:
        async for piece in pieces:
            yield piece
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
