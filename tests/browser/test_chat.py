"""Two people chat in the web client, in real Chromium, against a real server."""

from __future__ import annotations

import uuid
from typing import Any

from playwright.sync_api import expect

from tests.browser.chat_page import ChatPage
from tests.conftest import ServerThread

PHONE = {"width": 375, "height": 740}


def _room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def test_two_users_chat_see_each_other_typing_and_the_page_fits_a_phone(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    alice.expect_live()
    bob = ChatPage.open(new_context(viewport=PHONE), server, "bob", room)
    bob.expect_live()
    expect(alice.log.locator(".msg.membership", has_text="bob joined the room")).to_have_count(1)

    alice.send("Has anyone reviewed the latest design?")
    bob.expect_chats(["Has anyone reviewed the latest design?"])
    expect(bob.senders()).to_have_text(["alice"])
    expect(alice.log.locator(".msg.chat.own")).to_have_count(1)
    expect(bob.log.locator(".msg.chat.own")).to_have_count(0)
    expect(bob.log.locator(".msg.chat time")).to_have_count(1)

    typing = alice.page.locator("#typing")
    bob.box.fill("Yes, ")
    expect(typing).to_have_text("bob is typing…")
    expect(typing).to_have_text("")  # bob paused: his page said he stopped
    bob.box.press("End")
    bob.box.type("l")
    expect(typing).to_have_text("bob is typing…")
    bob.box.press("Backspace")
    bob.box.press("End")
    bob.box.type("looks good to me")
    bob.box.press("Enter")
    expect(typing).to_have_text("")
    for page in (alice, bob):
        page.expect_chats(["Has anyone reviewed the latest design?", "Yes, looks good to me"])
        expect(page.senders()).to_have_text(["alice", "bob"])
    expect(bob.log.locator(".msg.chat.own .text")).to_have_text(["Yes, looks good to me"])
    expect(bob.box).to_have_value("")

    width = bob.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide at {PHONE['width']} px"
    assert bob.page.request.get(server.http + "/favicon.ico").ok
    screenshot(alice.page, "desktop")
    screenshot(bob.page, "phone")


def test_a_guest_signs_in_by_name_and_out_again(server: ServerThread, new_context: Any) -> None:
    room = _room()
    chat = ChatPage(new_context().new_page())
    chat.goto(server)
    chat.page.get_by_label("Your name").fill("erin")
    chat.page.get_by_label("Your name").press("Enter")
    expect(chat.page.locator("#identity")).to_have_text("erin (guest)")
    chat.expect_live()
    chat.page.get_by_label("Room to join").fill(room)
    chat.page.get_by_label("Room to join").press("Enter")
    expect(chat.box).to_be_focused()
    chat.send("hello from erin")
    chat.expect_chats(["hello from erin"])

    chat.page.get_by_role("button", name="Sign out").click()
    expect(chat.page.get_by_label("Your name")).to_be_focused()
    expect(chat.page.get_by_role("log")).to_have_count(0)
    chat.page.reload()
    expect(chat.page.get_by_label("Your name")).to_be_visible()
