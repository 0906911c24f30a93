"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

It runs uvicorn in a thread with its own event loop, so code under test reaches it over a real
socket from any thread or process, and it speaks the streaming protocol: server-sent events of
`chat.completion.chunk` objects, a comment line as some servers send, then `data: [DONE]`.

Tests script what the next requests get; one-shot behaviours (`times=N`) are used up in order,
then the standing one (`times=None`) applies:

    fake.answer(["Hello", " world"])           # from now on (the standing behaviour)
    fake.fail(500, times=1)                    # the next request gets a 500
    fake.fail(429, retry_after="1")            # with a Retry-After header
    fake.hang()                                # no response at all until the fake stops
    fake.answer(["Hi"], end="drop", times=1)   # the connection drops after the pieces

To use it from tests elsewhere, import the fixture into a conftest.py (or the test module):

    from tests.ai.fake_openai import fake_openai_fixture  # noqa: F401

and take `fake_openai` as an argument; `fake_openai.url` is the base URL (`.../v1`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_PIECES = ("Hello", " from", " the fake", " model.")
End = Literal["done", "hang", "drop"]
_POLL = 0.02


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON body, or the raw text when it was not JSON


@dataclass(frozen=True)
class Behaviour:
    """What one request gets: a status with an error body, or a stream of pieces."""

    status: int = 200
    pieces: tuple[str, ...] = DEFAULT_PIECES
    delay: float = 0.0  # before each piece
    end: End = "done"  # after the pieces: [DONE], hang (until stopped), or drop the connection
    keepalive: float | None = None  # while hanging after the pieces, a comment every so often
    retry_after: str | None = None
    message: str = "The fake server was told to fail."
    hang: bool = False  # send nothing at all until stopped


class _Dropped(Exception):
    """Raised mid-stream so that uvicorn drops the connection, as a crashing server would."""


class FakeOpenAI:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: deque[Behaviour] = deque()
        self._standing = Behaviour()
        self._stopping = threading.Event()
        self._streaming = 0
        self._most_streaming = 0
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        # log_config=None: uvicorn's records go to the root logger, where pytest captures them
        # (a scripted drop logs a traceback that would otherwise clutter the test output).
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            ws="none",
            log_config=None,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-openai", daemon=True)
        self.port = 0

    def start(self) -> FakeOpenAI:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            self._stopping.wait(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        # Hanging requests return first: uvicorn waits for open requests before it exits.
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def most_at_once(self) -> int:
        """The most answers that were being streamed at the same moment."""
        with self._lock:
            return self._most_streaming

    def answer(
        self,
        pieces: Sequence[str],
        *,
        delay: float = 0.0,
        end: End = "done",
        keepalive: float | None = None,
        times: int | None = None,
    ) -> None:
        behaviour = Behaviour(pieces=tuple(pieces), delay=delay, end=end, keepalive=keepalive)
        self._plan(behaviour, times)

    def fail(
        self,
        status: int,
        *,
        times: int | None = 1,
        retry_after: str | None = None,
        message: str = Behaviour.message,
    ) -> None:
        self._plan(Behaviour(status=status, retry_after=retry_after, message=message), times)

    def hang(self, *, times: int | None = None) -> None:
        self._plan(Behaviour(hang=True), times)

    def _plan(self, behaviour: Behaviour, times: int | None) -> None:
        with self._lock:
            if times is None:
                self._script.clear()
                self._standing = behaviour
            else:
                self._script.extend([behaviour] * times)

    def _take(self, recorded: RecordedRequest) -> Behaviour:
        with self._lock:
            self._requests.append(recorded)
            return self._script.popleft() if self._script else self._standing

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        behaviour = self._take(RecordedRequest(request.url.path, dict(request.headers), body))
        if behaviour.hang:
            await self._until_stopped()
            return Response(status_code=503)
        if behaviour.status != 200:
            error = {"error": {"message": behaviour.message, "type": "fake_error", "code": None}}
            headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
            return JSONResponse(error, status_code=behaviour.status, headers=headers)
        model = body.get("model", "fake") if isinstance(body, dict) else "fake"
        return StreamingResponse(self._events(behaviour, model), media_type="text/event-stream")

    async def _events(self, behaviour: Behaviour, model: str) -> AsyncIterator[str]:
        with self._lock:
            self._streaming += 1
            self._most_streaming = max(self._most_streaming, self._streaming)
        try:
            yield ": fake-openai stream\n\n"
            yield _chunk(model, {"role": "assistant", "content": ""})
            for piece in behaviour.pieces:
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                yield _chunk(model, {"content": piece})
            if behaviour.end == "drop":
                raise _Dropped
            if behaviour.end == "hang":
                async for comment in self._keepalives(behaviour.keepalive):
                    yield comment
                return
            yield _chunk(model, {}, finish_reason="stop")
            yield "data: [DONE]\n\n"
        finally:
            with self._lock:
                self._streaming -= 1

    async def _keepalives(self, every: float | None) -> AsyncIterator[str]:
        """SSE comments every `every` seconds (none when None) until the fake stops."""
        waited = 0.0
        while not self._stopping.is_set():
            await asyncio.sleep(_POLL)
            waited += _POLL
            if every is not None and waited >= every:
                waited = 0.0
                yield ": keep-alive\n\n"

    async def _until_stopped(self) -> None:
        async for _ in self._keepalives(None):
            pass


def _chunk(model: str, delta: dict[str, str], finish_reason: str | None = None) -> str:
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


@pytest.fixture(name="fake_openai")
def fake_openai_fixture() -> Iterator[FakeOpenAI]:
    """A running FakeOpenAI that answers DEFAULT_PIECES until told otherwise; stopped after."""
    with FakeOpenAI() as fake:
        yield fake
