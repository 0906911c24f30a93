"""What the web client keeps when the tab, the network or the server goes away: nothing is lost,
nothing is shown twice, and what was missed comes back in order."""

from __future__ import annotations

import uuid
from typing import Any

from playwright.sync_api import expect

from tests.browser.chat_page import RECORD_STATES, ChatPage, alice_and_bob, run_async, seed
from tests.conftest import ServerThread


def _room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def _sent(chat: ChatPage, texts: list[str]) -> None:
    """`chat` shows `texts` as its messages, every one of them stored (none still pending)."""
    chat.expect_chats(texts)
    expect(chat.log.locator(".msg.pending")).to_have_count(0)


def _alice_and_bob(
    server: ServerThread, new_context: Any, room: str
) -> tuple[Any, ChatPage, ChatPage]:
    """alice's browser profile, her page and bob's, both in `room` and live."""
    alices, alice, _, bob = alice_and_bob(server, new_context, room)
    return alices, alice, bob


def test_a_reopened_tab_shows_what_was_missed_once_in_order(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    bobs = new_context()
    bobs.add_init_script(RECORD_STATES)
    bob = ChatPage.open(bobs, server, "bob", room)
    bob.expect_live()
    alice.send("before bob left")
    bob.expect_chats(["before bob left"])
    bob.page.close()

    missed = [f"missed {n}" for n in range(1, 5)]
    for text in missed:
        alice.send(text)
    _sent(alice, ["before bob left", *missed])

    # No deep link: the profile remembers who bob is, the room he had open, and his position.
    again = ChatPage(bobs.new_page())
    again.goto(server)
    expect(again.page.locator("#identity")).to_have_text("bob (guest)")
    again.expect_live()
    again.expect_chats(["before bob left", *missed])
    assert "catching-up" in again.states(), "the page resumed from its position"
    alice.send("after bob came back")
    again.expect_chats(["before bob left", *missed, "after bob came back"])
    screenshot(again.page, "reopened")


def test_a_message_typed_offline_is_delivered_after_reconnect(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    alices, alice, bob = _alice_and_bob(server, new_context, _room())
    alice.send("online first")
    bob.expect_chats(["online first"])

    alices.set_offline(True)
    expect(alice.connection).to_have_attribute("data-state", "offline")
    alice.send("typed while offline")
    alice.send("and a second one")
    expect(alice.log.locator(".msg.pending .text")).to_have_text(
        ["typed while offline", "and a second one"]
    )
    expect(alice.box).to_have_value("")
    screenshot(alice.page, "offline")

    alices.set_offline(False)
    alice.expect_live()
    for chat in (alice, bob):
        _sent(chat, ["online first", "typed while offline", "and a second one"])
    expect(bob.senders()).to_have_text(["alice", "alice", "alice"])


def test_a_server_restart_mid_conversation_loses_nothing(
    server: ServerThread, new_context: Any, restart: Any, screenshot: Any
) -> None:
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    bob = ChatPage.open(new_context(), server, "bob", room)
    alice.expect_live()
    bob.expect_live()
    alice.send("before the restart")
    bob.send("me too")
    for chat in (alice, bob):
        _sent(chat, ["before the restart", "me too"])

    def while_down() -> None:
        expect(alice.connection).not_to_have_attribute("data-state", "live")
        alice.send("while the server was away")
        expect(alice.log.locator(".msg.pending .text")).to_have_text(["while the server was away"])
        screenshot(alice.page, "server-away")

    restart(server, while_down)
    alice.expect_live()
    bob.expect_live()
    bob.send("after the restart")
    expected = ["before the restart", "me too", "while the server was away", "after the restart"]
    for chat in (alice, bob):
        _sent(chat, expected)


def test_a_long_absence_is_paged_back_from_history_after_a_truncated_replay(
    start_server: Any, new_context: Any
) -> None:
    """More was missed than the server replays and than one history page holds: the page asks
    for older pages until it meets what it had, without being scrolled."""
    server = start_server(rate_limit=1000, replay_limit=5)
    room = _room()
    bobs = new_context()
    bobs.add_init_script(RECORD_STATES)
    run_async(seed(server, room, ["before"]))
    bob = ChatPage.open(bobs, server, "bob", room)
    bob.expect_chats(["before"])
    bob.page.close()

    missed = [f"missed {n}" for n in range(70)]
    run_async(seed(server, room, missed))
    again = ChatPage(bobs.new_page())
    again.goto(server)
    again.expect_live()
    again.expect_chats(["before", *missed])
    assert "catching-up" in again.states()


def test_a_position_in_another_log_starts_over_from_history(
    server: ServerThread, new_context: Any
) -> None:
    room = _room()
    alices = new_context()
    alice = ChatPage.open(alices, server, "alice", room)
    alice.send("kept")
    _sent(alice, ["kept"])
    key = "productflo:guest:alice"
    real = alice.page.evaluate(f"JSON.parse(localStorage.getItem('{key}')).logId")
    alice.page.evaluate(
        f"""() => {{
            const kept = JSON.parse(localStorage.getItem('{key}'));
            localStorage.setItem('{key}', JSON.stringify({{...kept, logId: '{uuid.uuid4()}'}}));
        }}"""
    )
    alice.page.reload()
    alice.expect_live()
    _sent(alice, ["kept"])
    alice.send("after the reset")
    _sent(alice, ["kept", "after the reset"])
    assert alice.page.evaluate(f"JSON.parse(localStorage.getItem('{key}')).logId") == real


def test_a_message_typed_offline_survives_closing_the_tab(
    server: ServerThread, new_context: Any
) -> None:
    """The outbox is kept with the position: a tab closed before it could send still sends."""
    alices, alice, bob = _alice_and_bob(server, new_context, _room())
    alices.set_offline(True)
    expect(alice.connection).to_have_attribute("data-state", "offline")
    alice.send("written on the train")
    expect(alice.log.locator(".msg.pending .text")).to_have_text(["written on the train"])
    alice.page.close()

    alices.set_offline(False)
    again = ChatPage(alices.new_page())
    again.goto(server)
    for chat in (again, bob):
        _sent(chat, ["written on the train"])
