"""The providers there are, and the one the settings name (`create_provider`).

`OpenAIProvider` streams from any OpenAI-compatible chat-completions server;
`productflo.ai.offline.OfflineProvider`, the default, needs no network and answers from the
request and the room's recent messages. What a provider is lives in `productflo.ai.interface`.

What a client may see of a failure is `str(ProviderError)`: a fixed sentence, never a key, a URL
or a response body. The details go to the log, with the key redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from productflo.ai.interface import AIRequest, Provider, ProviderError
from productflo.ai.offline import OfflineProvider
from productflo.ai.prompts import alternating, messages_for
from productflo.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

TIMED_OUT = "The AI provider timed out"
UNREACHABLE = "The AI provider could not be reached"
INVALID = "The AI provider sent an invalid answer"
EMPTY = "The AI provider sent an empty answer"
FAILED = "The AI provider failed"


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
        messages = alternating(messages_for(request))
        payload = {"model": self.model, "messages": messages, "stream": True}
        # The deadline must not span a `yield`: it would cancel the consumer's code instead.
        try:
            async with asyncio.timeout(self._timeout):
                opened = await self._first_piece(payload)
        except (TimeoutError, httpx.TimeoutException) as error:
            raise self._give_up(_Failure(TIMED_OUT, repr(error))) from error
        except httpx.HTTPError as error:  # a bad URL, a proxy, a protocol error: not retried
            raise self._give_up(_Failure(FAILED, repr(error))) from error
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
