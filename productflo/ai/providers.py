"""Where the assistant's answers come from: a `Provider` streams an answer to an `AIRequest`.

Two providers: `OpenAIProvider` for any OpenAI-compatible chat-completions server, and
`OfflineProvider`, the default, which needs no network and answers from the request and the
room's recent messages. `create_provider` picks one from the settings.

What a client may see of a failure is `str(ProviderError)`: a fixed sentence, never a key, a URL
or a response body. The details go to the log, with the key redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from productflo.ai.prompts import ASSISTANT_ID, UNTITLED, messages_for, title_from_text
from productflo.errors import ProductfloError
from productflo.settings import Settings

logger = logging.getLogger(__name__)

AI_KINDS = ("haitch_chat", "idea", "documentation", "engineering")
DEFAULT_BASE_URL = "https://api.openai.com/v1"

TIMED_OUT = "The AI provider timed out"
UNREACHABLE = "The AI provider could not be reached"
INVALID = "The AI provider sent an invalid answer"
EMPTY = "The AI provider sent an empty answer"
FAILED = "The AI provider failed"


@dataclass(frozen=True)
class ContextMessage:
    user_id: str  # who said it; "haitch" for the assistant's earlier answers
    text: str


@dataclass(frozen=True)
class AIRequest:
    kind: str  # one of AI_KINDS
    user_id: str  # the requester
    room_id: str
    message: str  # the request text (data.message; may be "")
    attached_files: tuple[str, ...] = ()  # file names the client attached
    context: tuple[ContextMessage, ...] = ()  # the room's recent messages, oldest first

    def __post_init__(self) -> None:
        if self.kind not in AI_KINDS:
            raise ValueError(f"unknown AI request kind {self.kind!r}")


class ProviderError(ProductfloError):
    """The provider failed or timed out (AI_PROVIDER_ERROR).

    str(error) is safe to show a client: no keys, URLs, or stack text.
    """


class Provider(Protocol):
    """What the AI handler needs of a source of answers."""

    name: str  # "offline" | "openai"
    model: str  # the model name used ("offline" for the offline one)

    def stream(self, request: AIRequest) -> AsyncIterator[str]:
        """The answer, piece by piece; ProviderError when it cannot be had."""
        ...

    async def aclose(self) -> None: ...


def create_provider(settings: Settings) -> Provider:
    """The provider the settings name; ValueError when they name none that can work."""
    name = settings.ai_provider.strip().lower()
    if name == "offline":
        return OfflineProvider()
    if name != "openai":
        raise ValueError(
            f"unknown AI provider {settings.ai_provider!r}: expected 'offline' or 'openai'"
        )
    if not settings.ai_model:
        raise ValueError("PRODUCTFLO_AI_MODEL is required with PRODUCTFLO_AI_PROVIDER=openai")
    if not settings.ai_timeout > 0:
        raise ValueError("PRODUCTFLO_AI_TIMEOUT must be a positive number of seconds")
    key = settings.ai_api_key.get_secret_value() if settings.ai_api_key else None
    return OpenAIProvider(
        settings.ai_model, base_url=settings.ai_base_url, api_key=key, timeout=settings.ai_timeout
    )


class OfflineProvider:
    """The default: a deterministic answer built from the request and the room, no network."""

    name = "offline"
    model = "offline"

    async def stream(self, request: AIRequest) -> AsyncGenerator[str, None]:
        # Line by line, so that consumers stream offline answers the way they stream real ones.
        for line in offline_answer(request).splitlines(keepends=True):
            yield line
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        pass


class _Failure(Exception):
    """One attempt failed: `public` may reach a client, `detail` only the log."""

    def __init__(
        self,
        public: str,
        detail: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(public)
        self.public = public
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


# Worth another attempt: the connection failed or dropped before an answer began.
_CONNECTION_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass
class _Opened:
    response: httpx.Response
    pieces: AsyncGenerator[str, None]
    first: str


class OpenAIProvider:
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp), streamed.

    Retries (429, 5xx, connection errors) happen only before the first piece reaches the caller:
    after that, a retry would repeat text the room has already seen. `timeout` bounds every read
    and also the whole wait for the first piece, retries included, so a server that trickles
    keep-alives but no answer still times out.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        attempts: int = 3,
        backoff: float = 0.5,
        retry_after_cap: float = 10.0,
    ) -> None:
        self.model = model
        self._url = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        self._host = httpx.URL(self._url).host
        self._api_key = api_key
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._retry_after_cap = retry_after_cap
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, request: AIRequest) -> AsyncGenerator[str, None]:
        payload = {"model": self.model, "messages": messages_for(request), "stream": True}
        # The deadline must not span a `yield`: it would cancel the consumer's code instead.
        try:
            async with asyncio.timeout(self._timeout):
                opened = await self._first_piece(payload)
        except (TimeoutError, httpx.TimeoutException) as error:
            raise self._give_up(_Failure(TIMED_OUT, repr(error))) from error
        try:
            yield opened.first
            async for piece in opened.pieces:
                yield piece
        except _Failure as failure:
            raise self._give_up(failure) from failure
        except httpx.TimeoutException as error:
            raise self._give_up(_Failure(TIMED_OUT, repr(error))) from error
        except httpx.HTTPError as error:
            raise self._give_up(_Failure(FAILED, repr(error))) from error
        finally:
            await opened.pieces.aclose()
            await opened.response.aclose()

    async def _first_piece(self, payload: dict[str, Any]) -> _Opened:
        attempt = 1
        while True:
            try:
                return await self._attempt(payload)
            except _Failure as failure:
                if not failure.retryable or attempt >= self._attempts:
                    raise self._give_up(failure, attempt) from failure
                delay = failure.retry_after
                if delay is None:
                    delay = self._backoff * 2 ** (attempt - 1)
                self._log(failure, attempt, f"retrying in {delay:g} s")
                await asyncio.sleep(delay)
                attempt += 1

    async def _attempt(self, payload: dict[str, Any]) -> _Opened:
        """One request, up to its first piece of text; the response is left open on success."""
        request = self._client.build_request("POST", self._url, json=payload)
        try:
            response = await self._client.send(request, stream=True)
        except _CONNECTION_ERRORS as error:
            raise _Failure(UNREACHABLE, repr(error), retryable=True) from error
        try:
            if not response.is_success:
                raise await self._refusal(response)
            pieces = _content_pieces(response.aiter_lines())
            try:
                first = await anext(pieces, None)
            except _CONNECTION_ERRORS as error:
                raise _Failure(UNREACHABLE, repr(error), retryable=True) from error
            if first is None:
                raise _Failure(EMPTY, "the stream ended without any content")
            return _Opened(response, pieces, first)
        except BaseException:
            await response.aclose()
            raise

    async def _refusal(self, response: httpx.Response) -> _Failure:
        try:
            body = (await response.aread())[:500].decode(errors="replace")
        except _CONNECTION_ERRORS:
            body = ""
        status = response.status_code
        public = f"{FAILED} (HTTP {status})"
        detail = f"HTTP {status}: {body}"
        if status == httpx.codes.TOO_MANY_REQUESTS:
            after = self._retry_after(response.headers.get("retry-after"))
            return _Failure(public, detail, retryable=True, retry_after=after)
        return _Failure(public, detail, retryable=status >= 500)

    def _retry_after(self, value: str | None) -> float | None:
        """Retry-After in seconds, capped; None for absent or HTTP-date values (then back off)."""
        try:
            seconds = float(value) if value is not None else math.nan
        except ValueError:
            return None
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, self._retry_after_cap)

    def _give_up(self, failure: _Failure, attempt: int | None = None) -> ProviderError:
        self._log(failure, attempt, "giving up")
        return ProviderError(failure.public)

    def _log(self, failure: _Failure, attempt: int | None, outcome: str) -> None:
        tried = f" (attempt {attempt} of {self._attempts})" if attempt is not None else ""
        logger.warning(
            "AI provider %s, model %s%s: %s; %s",
            self._host,
            self.model,
            tried,
            self._redact(failure.detail),
            outcome,
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


async def _content_pieces(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The text of a chat-completions event stream: each `data:` chunk's delta, until [DONE].

    Blank lines, `: comments` and other fields (event, id, retry) carry no text. A stream that
    ends without [DONE] ends the answer too: some servers omit it.
    """
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _Failure(INVALID, f"not JSON: {data[:200]}") from None
        if isinstance(chunk, dict) and "error" in chunk:
            raise _Failure(FAILED, f"error in stream: {str(chunk['error'])[:500]}")
        content = _delta_content(chunk)
        if content:
            yield content


def _delta_content(chunk: Any) -> str | None:
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


# The offline assistant. Its answers are deterministic (no clock, no randomness, nothing that
# iterates a set), so the same request in the same room always reads the same.

OFFLINE_NOTE = (
    "_Offline assistant: no AI provider is configured, so this answer is assembled from the "
    "request and the room's recent messages, not generated by a model._"
)
_RECENT = 6
_WORD = re.compile(r"[a-z][a-z0-9]{3,}")
_REQUIREMENT = re.compile(r"\b(must|should|needs?|has to|have to|requires?)\b", re.IGNORECASE)
_STOPWORDS = frozenset(
    """
    about above after again also because been before being below between both could does doing
    done down during each even every from further give have having help here into just know
    like make many maybe more most much need only other over please really same should some
    still such sure than that their them then there these they thing things think this those
    through under until very want were what when where which while will with would write your
    haitch idea ideas okay must shall might last first next
    """.split()
)


@dataclass(frozen=True)
class _Digest:
    """The request and the room, boiled down to what the offline answers quote."""

    request: str
    topic: str
    people: tuple[ContextMessage, ...]  # what people (not haitch) said, oldest first
    participants: tuple[str, ...]
    keywords: tuple[str, ...]  # words the request and the room keep coming back to
    related: tuple[ContextMessage, ...]  # room messages sharing a word with the request
    questions: tuple[ContextMessage, ...]  # room messages that ask something
    files: tuple[str, ...]


def offline_answer(request: AIRequest) -> str:
    """The offline assistant's whole answer to a request, in markdown."""
    digest = _digest(request)
    compose = {
        "haitch_chat": _chat,
        "idea": _ideas,
        "engineering": _engineering,
        "documentation": _documentation,
    }[request.kind]
    return "\n".join(compose(digest)).strip() + "\n"


def _digest(request: AIRequest) -> _Digest:
    people = tuple(m for m in request.context if m.user_id != ASSISTANT_ID and m.text.strip())
    asked = set(_words(request.message))
    counts = Counter(
        word for text in (request.message, *(m.text for m in people)) for word in _words(text)
    )
    return _Digest(
        request=request.message.strip(),
        topic=title_from_text(request.message) or "the room's discussion",
        people=people,
        participants=tuple(dict.fromkeys(m.user_id for m in people)),
        keywords=tuple(word for word, count in counts.most_common(5) if count > 1),
        related=tuple(m for m in people if asked.intersection(_words(m.text)))[-3:],
        questions=tuple(m for m in people if "?" in m.text)[-3:],
        files=request.attached_files,
    )


def _chat(d: _Digest) -> list[str]:
    if d.request:
        asked = f'You asked: "{_excerpt(d.request, 300)}"'
    else:
        asked = "You asked for my view on the conversation so far."
    lines = [OFFLINE_NOTE, "", asked, ""]
    if d.related:
        lines += ["Points from the room that bear on it:", *_quotes(d.related), ""]
    if d.people:
        who = f"{_names(d.participants)}; {len(d.people)} messages"
        lines += [f"What the room has been discussing ({who}):", *_quotes(d.people[-_RECENT:]), ""]
    else:
        lines += ["The room has no earlier messages to draw on yet.", ""]
    if d.keywords:
        lines.append(f"Recurring topics: {', '.join(d.keywords)}.")
    if d.questions:
        asked_by = "; ".join(f'"{_excerpt(m.text, 100)}" ({m.user_id})' for m in d.questions)
        lines.append(f"Still open: {asked_by}.")
    if d.files:
        lines.append(f"Attached: {', '.join(d.files)} (the offline assistant cannot read files).")
    if d.keywords:
        lines.append(
            f"\nSuggested next step: settle **{d.keywords[0]}** and write the decision down "
            "(ask for `documentation` to get a draft)."
        )
    return lines


def _ideas(d: _Digest) -> list[str]:
    ideas = [
        "**A first version**: cut the request down to the smallest thing a user could try "
        "this week, and watch three people use it."
    ]
    ideas += [
        f'**Build on {m.user_id}\'s point** ("{_excerpt(m.text, 120)}"): make it one feature '
        "and test it on its own."
        for m in d.people[-3:]
    ]
    ideas += [
        f"**Lead with {word}**: make {word} what this product does better than the "
        "alternatives, and decide how to measure it."
        for word in d.keywords[:2]
    ]
    ideas += [
        "**Ask the users**: five short interviews about the problem behind the request; list "
        "the three pains heard most often.",
        "**A paper prototype**: sketch the flow or the object in an hour and try it on someone "
        "outside the team.",
    ]
    if d.files:
        ideas.append(
            f"**Mine the attachments**: go through {', '.join(d.files)} for constraints and "
            "ideas the room has not discussed yet."
        )
    numbered = [f"{number}. {idea}" for number, idea in enumerate(ideas, 1)]
    return [OFFLINE_NOTE, "", f"**Ideas for:** {d.topic}", "", *numbered]


def _engineering(d: _Digest) -> list[str]:
    requirement = f'"{_excerpt(d.request, 200)}"' if d.request else "the room's discussion"
    components = [
        f"- **{word}**: what it must do, its interface to the rest, build or buy."
        for word in d.keywords[:4]
    ]
    risks = [f'- Open question from {m.user_id}: "{_excerpt(m.text, 120)}"' for m in d.questions]
    lines = [
        OFFLINE_NOTE,
        "",
        f"## Engineering plan: {d.topic}",
        "",
        "### Approach",
        f"1. Restate the requirement as testable statements: {requirement}",
        "2. Split the work into the components below and agree on their interfaces first.",
        "3. Prototype the riskiest part first, and keep that prototype throw-away.",
        "4. Integrate early and often, behind the checks under Testing.",
        "",
        "### Components",
        "- **Core**: the part that does what the request asks for.",
        "- **Interfaces**: how users and other systems reach the core.",
        *components,
        "- **Integration and test rig**: runs the checks below on every change.",
        "",
        "### Risks",
        *risks,
        "- Requirements that live only in the chat: write them down before building.",
        "- Dependencies outside the team's control (suppliers, services, lead times).",
        "",
        "### Testing",
        "- One check per requirement statement, automated where it can be.",
        f"- A review of the first prototype with {_names(d.participants) or 'the team'}.",
        "",
        "### Next steps",
        "1. Name an owner for each component.",
        "2. Answer the open questions above."
        if d.questions
        else "2. Write the requirement statements down and review them in the room.",
        "3. Build the first prototype and report back here.",
    ]
    if d.people:
        lines += ["", "### Inputs from the room", *_quotes(d.related or d.people[-3:])]
    if d.files:
        lines += ["", "### Sources", *(f"- {name}" for name in d.files)]
    return lines


def _documentation(d: _Digest) -> list[str]:
    goals = [f"- Decide and document **{word}**." for word in d.keywords[:3]]
    requirements = [
        f"- [ ] {_excerpt(m.text, 160)} ({m.user_id})"
        for m in d.people
        if _REQUIREMENT.search(m.text) and "?" not in m.text
    ]
    questions = [f'- "{_excerpt(m.text, 160)}" ({m.user_id})' for m in d.questions]
    return [
        f"# {title_from_text(d.request) or UNTITLED}",
        "",
        OFFLINE_NOTE,
        *_section("Overview", [d.request], "What the room has discussed so far, collected."),
        *_section("Goals", goals, "- To be agreed by the team."),
        *_section("Requirements", requirements[-_RECENT:], "- [ ] To be written."),
        *_section("Open questions", questions, "- None recorded yet."),
        *_section("Discussion so far", _quotes(d.people[-_RECENT:]), "- No messages yet."),
        *_section("Sources", [f"- {name}" for name in d.files], "- No files were attached."),
    ]


def _section(title: str, items: list[str], empty: str) -> list[str]:
    return ["", f"## {title}", "", *([item for item in items if item] or [empty])]


def _words(text: str) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS]


def _quotes(messages: tuple[ContextMessage, ...]) -> list[str]:
    return [f'- **{m.user_id}**: "{_excerpt(m.text, 140)}"' for m in messages]


def _names(participants: tuple[str, ...], shown: int = 5) -> str:
    names = ", ".join(participants[:shown])
    hidden = len(participants) - shown
    return f"{names} and {hidden} more" if hidden > 0 else names


def _excerpt(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
