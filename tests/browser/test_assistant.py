"""The assistant in the web client: asked with a slash command, answered in one bubble, its
markdown rendered without letting the model's text become markup."""

from __future__ import annotations

import re
import uuid
from typing import Any

from playwright.sync_api import expect
from pydantic import SecretStr

from tests.ai.fake_openai import FakeOpenAI, fake_openai_fixture  # noqa: F401
from tests.browser.chat_page import ChatPage
from tests.conftest import ServerThread

INJECTION = '<img src=x onerror="window.__injected = true">'
STORED = re.compile(r"^\d+$")  # the answer's line carries its event_id once it is stored
PIECES = ["**Polycarbonate**", " with a gasket.\n\n", f"- {INJECTION}\n", "- `IP67` rated"]


def _room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def test_a_streamed_answer_renders_once_as_safe_markdown(
    start_server: Any, fake_openai: FakeOpenAI, new_context: Any, screenshot: Any
) -> None:
    fake_openai.answer(PIECES, delay=0.6)
    server = start_server(**_openai(fake_openai))
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    alice.expect_live()
    alice.send("/haitch Which material for the enclosure?")

    request = alice.log.locator(".msg.request")
    expect(request.locator(".text")).to_have_text("Which material for the enclosure?")
    answer = alice.log.locator(".msg.answer")
    expect(answer).to_have_attribute("aria-busy", "true")  # streaming, not stored yet
    screenshot(alice.page, "assistant-streaming")
    expect(answer).to_have_attribute("data-event-id", STORED)
    expect(answer).not_to_have_attribute("aria-busy", "true")

    alice.send("thanks")
    alice.expect_chats(["thanks"])
    _rendered_once(alice)
    expect(request.locator(".progress")).to_have_count(0)
    screenshot(alice.page, "assistant")

    # Someone who opens the room later reads the same answer, from history.
    bob = ChatPage.open(new_context(), server, "bob", room)
    bob.expect_chats(["thanks"])
    _rendered_once(bob)


def _openai(fake: FakeOpenAI) -> dict[str, Any]:
    return {
        "ai_provider": "openai",
        "ai_base_url": fake.url,
        "ai_model": "test-model",
        "ai_api_key": SecretStr("sk-test-key"),  # model_copy does not validate
        "ai_timeout": 10.0,
    }


def test_a_provider_failure_is_shown_beside_the_request(
    start_server: Any, fake_openai: FakeOpenAI, new_context: Any, screenshot: Any
) -> None:
    fake_openai.fail(500, times=10)
    server = start_server(**_openai(fake_openai))
    alice = ChatPage.open(new_context(), server, "alice", _room())
    alice.expect_live()
    alice.send("/eng How thick should the wall be?")
    request = alice.log.locator(".msg.request")
    expect(request.get_by_role("alert")).to_contain_text("haitch could not answer")
    expect(request.locator(".progress")).to_have_count(0)
    expect(alice.log.locator(".msg.answer")).to_have_count(0)
    screenshot(alice.page, "provider-failed")


def _rendered_once(chat: ChatPage) -> None:
    answer = chat.log.locator(".msg.answer")
    expect(answer).to_have_count(1)
    expect(answer.locator("strong")).to_have_text(["Polycarbonate"])
    expect(answer.locator("li")).to_have_text([INJECTION, "IP67 rated"])
    expect(answer.locator("code")).to_have_text(["IP67"])
    expect(chat.log.locator("img")).to_have_count(0)
    assert chat.page.evaluate("window.__injected") is None


def test_the_offline_assistant_document_shows_once(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    """The offline provider streams its document in one piece just before storing it, so the
    stored answer may overtake the piece: either way, one bubble."""
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    alice.expect_live()
    alice.send("The case must be waterproof.")
    alice.send("/doc thermostat specification")
    answer = alice.log.locator(".msg.answer")
    expect(answer).to_have_attribute("data-event-id", STORED)
    expect(answer.locator(".text strong").first).to_contain_text("Document ready")
    alice.send("received")
    alice.expect_chats(["The case must be waterproof.", "received"])
    expect(answer).to_have_count(1)
    expect(answer.locator("h3")).to_have_count(1)
    screenshot(alice.page, "document")
