"""Providers: OpenAIProvider against a real fake server on loopback, and the offline assistant."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from productflo.ai.interface import AI_KINDS, AIRequest, ContextMessage, Provider, ProviderError
from productflo.ai.offline import OfflineProvider
from productflo.ai.providers import OpenAIProvider, create_provider
from productflo.settings import Settings
from tests.ai.fake_openai import DEFAULT_PIECES, FakeOpenAI, fake_openai_fixture  # noqa: F401
from tests.conftest import free_port

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0  # a provider that ignores its own timeout fails the test, not hangs it
KEY = "sk-test-0123456789abcdef"
CONTEXT = (
    ContextMessage("alice", "The battery must last a full week of hiking."),
    ContextMessage("haitch", "A 2000 mAh cell would do."),
    ContextMessage("bob", "Should the enclosure be aluminium or recycled plastic?"),
)
REQUEST = AIRequest(
    kind="engineering",
    user_id="dave",
    room_id="r1",
    message="Which battery for the hiking tracker?",
    attached_files=("power-budget.xlsx",),
    context=CONTEXT,
)


@pytest.fixture
async def provider(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    """Talks to the fake, with a short backoff so that retries cost little time."""
    provider = OpenAIProvider(
        "fake-model", base_url=fake_openai.url, api_key=KEY, timeout=5, backoff=0.01
    )
    yield provider
    await provider.aclose()


async def collect(provider: Provider, request: AIRequest = REQUEST, into: Any = None) -> list[str]:
    """The pieces of an answer; `into` (a list) keeps those that came before an error."""
    pieces: list[str] = [] if into is None else into
    async with asyncio.timeout(TIMEOUT):
        async for piece in provider.stream(request):
            pieces.append(piece)
    return pieces


async def failure(provider: Provider, request: AIRequest = REQUEST) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request)
    return caught.value


async def fails_in_time(provider: OpenAIProvider) -> ProviderError:
    """The error of a provider with a 0.5 s timeout, which must come well within 3 s; closed."""
    try:
        started = time.monotonic()
        error = await failure(provider)
        assert time.monotonic() - started < 3
    finally:
        await provider.aclose()
    return error


def assert_safe(error: ProviderError, fake: FakeOpenAI) -> None:
    """What a client may see names neither the key nor where the provider is."""
    text = str(error)
    assert text.startswith("The AI provider")
    assert KEY not in text
    assert fake.url not in text
    assert "127.0.0.1" not in text


async def test_the_request_carries_model_key_context_and_files(fake_openai: FakeOpenAI) -> None:
    settings = Settings(
        ai_provider="openai",
        ai_base_url=fake_openai.url + "/",  # a trailing slash is tolerated
        ai_api_key=SecretStr(KEY),
        ai_model="fake-model",
    )
    provider = create_provider(settings)
    try:
        assert (provider.name, provider.model) == ("openai", "fake-model")
        await collect(provider)
    finally:
        await provider.aclose()
    [seen] = fake_openai.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["model"] == "fake-model"
    assert seen.body["stream"] is True
    messages = seen.body["messages"]
    assert messages[0]["role"] == "system"
    assert {"role": "user", "content": f"alice: {CONTEXT[0].text}"} in messages
    assert {"role": "assistant", "content": CONTEXT[1].text} in messages
    # Roles alternate (bob's message and the request share the last user turn), which strict
    # chat templates require; the request comes last.
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"].startswith(f"bob: {CONTEXT[2].text}")
    assert "\n\ndave: Which battery for the hiking tracker?" in messages[-1]["content"]
    assert messages[-1]["content"].endswith("- power-budget.xlsx")


async def test_without_a_key_no_authorization_is_sent(fake_openai: FakeOpenAI) -> None:
    """Local servers (Ollama, llama.cpp) need no key."""
    provider = OpenAIProvider("local", base_url=fake_openai.url)
    try:
        await collect(provider)
    finally:
        await provider.aclose()
    assert "authorization" not in fake_openai.requests[0].headers


async def test_pieces_arrive_in_order_as_they_are_streamed(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.answer(["The ", "battery ", "is ", "fine."], delay=0.2)
    started = time.monotonic()
    arrivals: list[float] = []
    pieces: list[str] = []
    async for piece in provider.stream(REQUEST):
        arrivals.append(time.monotonic() - started)
        pieces.append(piece)
    assert pieces == ["The ", "battery ", "is ", "fine."]
    assert "".join(pieces) == "The battery is fine."
    assert arrivals[-1] - arrivals[0] >= 0.5  # the first piece did not wait for the last


async def test_a_500_is_retried_and_the_answer_follows(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.fail(500, times=1)
    assert await collect(provider) == list(DEFAULT_PIECES)
    assert len(fake_openai.requests) == 2


async def test_a_connection_dropped_before_any_text_is_retried(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.answer([], end="drop", times=1)
    assert await collect(provider) == list(DEFAULT_PIECES)
    assert len(fake_openai.requests) == 2


async def test_a_429_is_retried_after_the_time_it_asks_for(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.fail(429, retry_after="1", times=1)
    started = time.monotonic()
    assert await collect(provider) == list(DEFAULT_PIECES)
    assert time.monotonic() - started >= 0.9  # the backoff alone would be 0.01 s
    assert len(fake_openai.requests) == 2


async def test_retry_after_is_capped(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail(429, retry_after="3600", times=1)
    provider = OpenAIProvider("m", base_url=fake_openai.url, retry_after_cap=0.1)
    try:
        started = time.monotonic()
        assert await collect(provider) == list(DEFAULT_PIECES)
        assert time.monotonic() - started < 3
    finally:
        await provider.aclose()


async def test_a_persistent_500_fails_after_three_attempts(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.fail(500, times=None)
    error = await failure(provider)
    assert str(error) == "The AI provider failed (HTTP 500)"
    assert len(fake_openai.requests) == 3
    assert_safe(error, fake_openai)


async def test_a_401_fails_at_once(fake_openai: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake_openai.fail(401, times=None)
    error = await failure(provider)
    assert str(error) == "The AI provider failed (HTTP 401)"
    assert len(fake_openai.requests) == 1
    assert_safe(error, fake_openai)


async def test_a_hanging_server_times_out(fake_openai: FakeOpenAI) -> None:
    fake_openai.hang()
    provider = OpenAIProvider("m", base_url=fake_openai.url, api_key=KEY, timeout=0.5)
    error = await fails_in_time(provider)
    assert str(error) == "The AI provider timed out"
    assert_safe(error, fake_openai)


async def test_keepalives_without_an_answer_time_out_at_the_deadline(
    fake_openai: FakeOpenAI,
) -> None:
    """Comments every 0.1 s keep each read under the timeout; the first piece never comes."""
    fake_openai.answer([], end="hang", keepalive=0.1)
    provider = OpenAIProvider("m", base_url=fake_openai.url, timeout=0.5)
    error = await fails_in_time(provider)
    assert str(error) == "The AI provider timed out"


async def test_a_drop_after_the_first_piece_fails_without_repeating_text(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.answer(["Half ", "an answer"], end="drop", times=1)
    pieces: list[str] = []
    with pytest.raises(ProviderError) as caught:
        await collect(provider, into=pieces)
    assert pieces == ["Half ", "an answer"]
    assert str(caught.value) == "The AI provider failed"
    assert len(fake_openai.requests) == 1


async def test_a_stall_after_the_first_piece_times_out(fake_openai: FakeOpenAI) -> None:
    fake_openai.answer(["Half "], end="hang")
    provider = OpenAIProvider("m", base_url=fake_openai.url, timeout=0.5)
    pieces: list[str] = []
    try:
        with pytest.raises(ProviderError, match="timed out"):
            await collect(provider, into=pieces)
    finally:
        await provider.aclose()
    assert pieces == ["Half "]
    assert len(fake_openai.requests) == 1


async def test_an_empty_answer_is_an_error(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.answer([])
    assert str(await failure(provider)) == "The AI provider sent an empty answer"


async def test_an_unreachable_server_is_tried_three_times(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="productflo.ai.providers")
    url = f"http://127.0.0.1:{free_port()}/v1"
    provider = OpenAIProvider("m", base_url=url, api_key=KEY, backoff=0.01)
    try:
        error = await failure(provider)
    finally:
        await provider.aclose()
    assert str(error) == "The AI provider could not be reached"
    logged = [record.getMessage() for record in caplog.records]
    assert [f"(attempt {n} of 3)" in line for n, line in enumerate(logged, 1)] == [True] * 3
    assert logged[-1].endswith("giving up")


async def test_the_log_has_the_details_but_never_the_key(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="productflo.ai.providers")
    fake_openai.fail(401, message=f"Incorrect API key provided: {KEY}")
    error = await failure(provider)
    assert_safe(error, fake_openai)
    assert "Incorrect API key provided: ***" in caplog.text
    assert "401" in caplog.text
    assert KEY not in caplog.text


def test_the_settings_choose_the_provider(tmp_path: Path) -> None:
    assert isinstance(create_provider(Settings(data_dir=tmp_path)), OfflineProvider)
    with pytest.raises(ValueError, match="unknown AI provider"):
        create_provider(Settings(data_dir=tmp_path, ai_provider="skynet"))
    with pytest.raises(ValueError, match="PRODUCTFLO_AI_MODEL"):
        create_provider(Settings(data_dir=tmp_path, ai_provider="openai"))


# The offline assistant


def offline_request(kind: str, message: str = REQUEST.message) -> AIRequest:
    return AIRequest(kind, "dave", "r1", message, REQUEST.attached_files, CONTEXT)


@pytest.mark.parametrize("kind", AI_KINDS)
async def test_offline_answers_are_deterministic_and_labelled(kind: str) -> None:
    provider = OfflineProvider()
    first = await collect(provider, offline_request(kind))
    again = await collect(provider, offline_request(kind))
    assert first == again
    assert len(first) > 5  # streamed in pieces, not at once
    assert "Offline assistant" in "".join(first)


@pytest.mark.parametrize("kind", AI_KINDS)
async def test_offline_answers_use_the_request_and_the_room(kind: str) -> None:
    answer = "".join(await collect(OfflineProvider(), offline_request(kind)))
    assert "Which battery for the hiking tracker?" in answer
    assert "The battery must last a full week of hiking." in answer  # alice's point
    assert "alice" in answer
    assert "A 2000 mAh cell" not in answer  # haitch's own words are not the room's


@pytest.mark.parametrize("kind", AI_KINDS)
async def test_offline_answers_work_in_an_empty_room(kind: str) -> None:
    answer = "".join(await collect(OfflineProvider(), AIRequest(kind, "dave", "r1", "")))
    assert "Offline assistant" in answer


async def test_offline_ideas_are_a_numbered_list() -> None:
    answer = "".join(await collect(OfflineProvider(), offline_request("idea")))
    numbers = [line.split(".")[0] for line in answer.splitlines() if line[:1].isdigit()]
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]
    assert len(numbers) >= 5


async def test_offline_engineering_has_the_sections() -> None:
    answer = "".join(await collect(OfflineProvider(), offline_request("engineering")))
    for section in ("Approach", "Components", "Risks", "Testing", "Next steps"):
        assert f"### {section}\n" in answer
    assert "Should the enclosure be aluminium or recycled plastic?" in answer  # an open risk


async def test_offline_documentation_is_a_titled_outline() -> None:
    answer = "".join(await collect(OfflineProvider(), offline_request("documentation")))
    assert answer.startswith("# Which battery for the hiking tracker?\n")
    for section in ("Overview", "Goals", "Requirements", "Open questions", "Sources"):
        assert f"\n## {section}\n" in answer
    assert "- power-budget.xlsx" in answer
