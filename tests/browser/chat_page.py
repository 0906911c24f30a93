"""The web client as a test drives it: what a user sees and does, through roles and labels."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from typing import Any

from playwright.sync_api import Locator, Page, expect

from tests.client import Client
from tests.conftest import ServerThread

# Installed before the page's own scripts: every state the connection indicator goes through, so a
# test can see a state that lasts only a moment ("catching up") without racing it.
RECORD_STATES = """
window.__states = [];
new MutationObserver((changes) => {
  for (const change of changes) {
    if (change.target.id === 'connection') window.__states.push(change.target.dataset.state);
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-state']});
"""


class ChatPage:
    def __init__(self, page: Page) -> None:
        self.page = page

    @classmethod
    def open(cls, context: Any, server: ServerThread, user: str, room: str) -> ChatPage:
        """A new tab on the deep link that signs `user` in and opens `room`."""
        chat = cls(context.new_page())
        chat.goto(server, f"/?user_id={user}&room={room}")
        return chat

    def goto(self, server: ServerThread, path: str = "/") -> None:
        self.page.goto(server.http + path)

    @property
    def log(self) -> Locator:
        """The open room's messages (SPEC section 8: the one visible `log`)."""
        return self.page.get_by_role("log")

    @property
    def box(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message")

    @property
    def connection(self) -> Locator:
        return self.page.locator("#connection")

    def chats(self) -> Locator:
        """The texts of the open room's chat messages (membership lines and answers left out)."""
        return self.log.locator(".msg.chat .text")

    def senders(self) -> Locator:
        return self.log.locator(".msg.chat .sender")

    def send(self, text: str) -> None:
        self.box.fill(text)
        self.box.press("Enter")

    def expect_live(self) -> None:
        expect(self.connection).to_have_attribute("data-state", "live")

    def expect_chats(self, texts: list[str]) -> None:
        """Exactly these messages, in this order: each once."""
        expect(self.chats()).to_have_text(texts)

    def states(self) -> list[str]:
        """The connection states this page has shown, in order (RECORD_STATES)."""
        states: list[str] = self.page.evaluate("window.__states")
        return states

    def room_button(self, room: str) -> Locator:
        return self.page.get_by_role("navigation", name="Rooms").locator(
            f'button[data-room="{room}"]'
        )


def alice_and_bob(
    server: ServerThread, new_context: Any, room: str
) -> tuple[Any, ChatPage, Any, ChatPage]:
    """alice's browser profile and her page, bob's and his, both in `room` and live."""
    alices = new_context()
    alice = ChatPage.open(alices, server, "alice", room)
    bobs = new_context()
    bob = ChatPage.open(bobs, server, "bob", room)
    alice.expect_live()
    bob.expect_live()
    return alices, alice, bobs, bob


def run_async(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` to its end on a thread of its own: Playwright's loop owns this one."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def seed(server: ServerThread, room: str, texts: list[str]) -> None:
    """`texts` said in `room` by dave, each acknowledged before the next."""
    client = await Client.open(f"{server.ws}/ws?user_id=dave")
    batch = uuid.uuid4().hex
    try:
        for n, text in enumerate(texts):
            chat = {"code": "chat", "room_id": room, "client_msg_id": f"{batch}-{n}"}
            await client.send({**chat, "data": {"message": text}})
            await client.recv_until(lambda m, n=n: m.get("client_msg_id") == f"{batch}-{n}")
    finally:
        await client.close()
