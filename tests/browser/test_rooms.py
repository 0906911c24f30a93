"""Rooms, history and the inbox in the web client."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from playwright.sync_api import expect

from productflo.auth import mint
from tests.browser.chat_page import ChatPage, run_async, seed
from tests.conftest import ServerThread

SEEDED = 130  # history pages are 50: the newest page, then two more on scrolling up


def _room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def test_scrolling_up_pages_back_through_history_showing_each_message_once(
    start_server: Any, new_context: Any, screenshot: Any
) -> None:
    server = start_server(rate_limit=1000)  # the seeding is faster than a person
    room = _room()
    texts = [f"message {n}" for n in range(SEEDED)]
    run_async(seed(server, room, texts))
    carol = ChatPage.open(new_context(), server, "carol", room)
    expect(carol.chats()).to_have_count(50)
    expect(carol.chats().last).to_have_text(texts[-1])
    for shown in (100, SEEDED):
        carol.log.evaluate("log => { log.scrollTop = 0; }")
        expect(carol.chats()).to_have_count(shown)
    carol.expect_chats(texts)
    expect(carol.log.locator(".more")).to_have_text("The start of the room.")
    screenshot(carol.page, "history")


def test_unread_counts_for_rooms_not_open(server: ServerThread, new_context: Any) -> None:
    room, elsewhere = _room(), _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    bob = ChatPage.open(new_context(), server, "bob", room)
    alice.expect_live()
    bob.expect_live()
    bob.page.get_by_label("Room to join").fill(elsewhere)
    bob.page.get_by_role("button", name="Join", exact=True).click()
    expect(bob.page.locator("#room-title")).to_have_text(elsewhere)
    expect(bob.log.locator(".msg.membership .text")).to_have_text(["bob joined the room"])

    bob.room_button(room).focus()  # a keyboard user, on the list while messages arrive
    alice.send("one")
    alice.send("two")
    expect(bob.room_button(room).locator(".unread")).to_have_text("2")
    expect(bob.room_button(room)).to_be_focused()
    expect(bob.room_button(room)).to_have_attribute("aria-label", f"{room}, 2 unread")
    bob.page.keyboard.press("Enter")
    bob.expect_chats(["one", "two"])
    expect(bob.room_button(room).locator(".unread")).to_have_count(0)

    bob.page.get_by_role("button", name="Leave").click()
    expect(bob.log.locator(".msg.membership .text").last).to_have_text("bob left the room")
    expect(bob.room_button(room)).to_have_attribute("aria-label", f"{room} (not a member)")


def test_a_mention_reaches_the_inbox_of_a_user_signed_in_with_a_token(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    room = _room()
    bobs = new_context()
    bob = ChatPage(bobs.new_page())
    bob.goto(server)
    bob.page.get_by_label("Access token").fill(mint(server.settings, "bob"))
    bob.page.get_by_role("button", name="Sign in with token").click()
    expect(bob.page.locator("#identity")).to_have_text("Signed in as bob")
    bob.expect_live()

    alice = ChatPage.open(new_context(), server, "alice", room)
    alice.expect_live()
    alice.send("@bob can you review the enclosure?")
    badge = bob.page.locator("#inbox-badge")
    expect(badge).to_have_text("1")
    inbox = bob.page.get_by_role("button", name="Inbox, 1 new")
    inbox.click()
    entry = bob.page.locator("#inbox-list .notification")
    expect(entry.locator(".title")).to_have_text([f"alice mentioned you in {room}"])
    expect(entry.locator(".excerpt")).to_have_text(["@bob can you review the enclosure?"])
    expect(badge).to_be_hidden()
    screenshot(bob.page, "inbox")

    # After a reload the inbox comes from GET /users/me/notifications, already read.
    bob.page.reload()
    bob.expect_live()
    bob.page.get_by_role("button", name="Inbox").click()
    expect(entry.locator(".title")).to_have_text([f"alice mentioned you in {room}"])
    expect(badge).to_be_hidden()
    entry.click()
    expect(bob.page.locator("#room-title")).to_have_text(room)
    bob.expect_chats(["@bob can you review the enclosure?"])
    expect(bob.log.locator(".mention")).to_have_text(["@bob"])


def test_a_refused_message_shows_its_error_beside_it(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    """A room first used by a signed-in user is closed to guests: the guest's message is
    marked not sent, with the server's reason next to it."""
    room = _room()
    bob = ChatPage(new_context().new_page())
    bob.goto(server)
    bob.page.get_by_label("Access token").fill(mint(server.settings, "bob"))
    bob.page.get_by_role("button", name="Sign in with token").click()
    bob.page.get_by_label("Room to join").fill(room)
    bob.page.get_by_role("button", name="Join", exact=True).click()
    expect(bob.log.locator(".msg.membership .text")).to_have_text(["bob joined the room"])

    alice = ChatPage.open(new_context(), server, "alice", room)
    alice.expect_live()
    alice.send("let me in")
    refused = alice.log.locator(".msg.failed")
    expect(refused.locator(".text")).to_have_text(["let me in"])
    expect(refused.get_by_role("alert")).not_to_be_empty()
    expect(refused.locator(".state")).to_have_text(["not sent"])
    expect(alice.log.locator(".msg.notice")).to_have_count(1)  # the refused join, said once
    screenshot(alice.page, "refused")

    bob.send("only signed-in people here")
    bob.expect_chats(["only signed-in people here"])


def test_a_token_the_server_refuses_returns_to_the_sign_in_saying_why(
    server: ServerThread, new_context: Any
) -> None:
    forged = jwt.encode(
        {"sub": "mallory", "exp": int(time.time()) + 600}, "not-the-server-secret-0123456789abcdef"
    )
    chat = ChatPage(new_context().new_page())
    chat.goto(server)
    chat.page.get_by_label("Access token").fill(forged)
    chat.page.get_by_role("button", name="Sign in with token").click()
    expect(chat.page.get_by_role("alert")).to_contain_text("did not accept your token")
    expect(chat.page.get_by_label("Your name")).to_be_visible()
