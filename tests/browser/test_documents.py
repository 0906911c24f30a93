"""The document panel: two people edit one of the room's Yjs documents in real Chromium, against a
real server, online and with one of them offline for a while; both end with the server's text."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from playwright.sync_api import Locator, expect

from productflo.auth import mint
from tests.browser.chat_page import ChatPage, alice_and_bob
from tests.conftest import ServerThread


def _room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def _open_document(chat: ChatPage, name: str) -> Locator:
    """Open the document `name` from the keyboard: the room's Documents button, the name, Enter.
    The editor it returns has the focus and the document's text (it is editable once synced)."""
    toggle = chat.page.get_by_role("button", name="Documents", exact=True)
    toggle.focus()
    chat.page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(chat.page.get_by_label("Document name", exact=True)).to_be_focused()
    chat.page.keyboard.type(name)
    chat.page.keyboard.press("Enter")
    editor = _editor(chat)
    expect(editor).to_be_focused()
    expect(editor).to_be_editable()
    return editor


def _editor(chat: ChatPage) -> Locator:
    return chat.page.get_by_role("textbox", name="Document", exact=True)


def _others(chat: ChatPage) -> Locator:
    return chat.page.get_by_role("list", name="Others in this document")


def _stored_text(server: ServerThread, room: str, doc: str) -> str:
    """The document's text as GET /rooms/{room}/docs/{doc} gives it to a signed-in user."""
    token = mint(server.settings, "carol")
    response = httpx.get(
        f"{server.http}/rooms/{room}/docs/{doc}", headers={"Authorization": f"Bearer {token}"}
    )
    response.raise_for_status()
    text: str = response.json()["text"]
    return text


def _caret(editor: Locator) -> int:
    start: int = editor.evaluate("box => box.selectionStart")
    return start


@dataclass
class Editing:
    """alice and bob in a new room, with one document of it open in both their editors."""

    room: str
    alice: ChatPage
    bobs: Any  # bob's browser profile
    bob: ChatPage
    alices_editor: Locator
    bobs_editor: Locator


def _both_editing(server: ServerThread, new_context: Any, name: str) -> Editing:
    room = _room()
    _, alice, bobs, bob = alice_and_bob(server, new_context, room)
    return Editing(room, alice, bobs, bob, _open_document(alice, name), _open_document(bob, name))


def test_two_editors_converge_on_the_stored_text_keep_their_caret_and_see_each_other(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    editing = _both_editing(server, new_context, "Release plan")
    alice, bob = editing.alice, editing.bob
    alices_editor, bobs_editor = editing.alices_editor, editing.bobs_editor

    alices_editor.press_sequentially("# Release plan\nship on friday")
    expect(bobs_editor).to_have_value("# Release plan\nship on friday")

    # Both type at once: alice at the end, bob at the start.
    bobs_editor.press("Control+Home")
    for alices, bobs in [(" if", "Owner"), (" tests", ": bob"), (" pass", "\n")]:
        alices_editor.press_sequentially(alices)
        bobs_editor.press_sequentially(bobs)
    expected = "Owner: bob\n# Release plan\nship on friday if tests pass"
    for editor in (alices_editor, bobs_editor):
        expect(editor).to_have_value(expected)

    # bob's cursor, on line 2 of alice's screen; her caret stays after "ship" as bob types above.
    expect(_others(alice).get_by_role("listitem")).to_have_text(["bob — line 2"])
    after_ship = expected.index("ship") + len("ship")
    alices_editor.evaluate(f"box => box.setSelectionRange({after_ship}, {after_ship})")
    alices_editor.press("ArrowLeft")
    alices_editor.press("ArrowRight")
    expect(_others(bob).get_by_role("listitem")).to_have_text(["alice — line 3"])
    bobs_editor.press_sequentially("Due: friday\n")
    expected = "Owner: bob\nDue: friday\n# Release plan\nship on friday if tests pass"
    expect(alices_editor).to_have_value(expected)
    assert _caret(alices_editor) == after_ship + len("Due: friday\n")
    expect(_others(alice).get_by_role("listitem")).to_have_text(["bob — line 3"])
    expect(_others(bob).get_by_role("listitem")).to_have_text(["alice — line 4"])
    for chat in (alice, bob):
        expect(chat.page.locator("#doc-status")).to_have_text("All changes saved")
    screenshot(alice.page, "document")
    assert _stored_text(server, editing.room, "Release-plan") == expected

    # bob closes the document: he is gone from alice's list at once, not after a timeout.
    bob.page.get_by_role("button", name="Close", exact=True).click()
    expect(_others(alice).get_by_role("listitem")).to_have_count(0)
    expect(alice.page.get_by_text("Nobody else.")).to_be_visible()


def test_edits_made_offline_merge_on_reconnect_and_nothing_is_lost(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    editing = _both_editing(server, new_context, "notes")
    alice, bobs, bob = editing.alice, editing.bobs, editing.bob
    alices_editor, bobs_editor = editing.alices_editor, editing.bobs_editor
    alices_editor.press_sequentially("shared start\n")
    expect(bobs_editor).to_have_value("shared start\n")

    bobs.set_offline(True)
    expect(bob.connection).to_have_attribute("data-state", "offline")
    alices_editor.press_sequentially("alice while bob was away\n")
    bobs_editor.press("Control+End")
    bobs_editor.press_sequentially("bob on the train\n")
    bobs_editor.press("Control+Home")
    bobs_editor.press_sequentially("Notes: ")
    status = bob.page.locator("#doc-status")
    expect(status).to_have_text(re.compile(r"^Offline: .*waiting to send$"))
    expect(bobs_editor).to_have_value("Notes: shared start\nbob on the train\n")
    expect(alices_editor).to_have_value("shared start\nalice while bob was away\n")
    screenshot(bob.page, "document-offline")

    bobs.set_offline(False)
    bob.expect_live()
    expect(alices_editor).to_have_value(re.compile("bob on the train"))
    expect(bobs_editor).to_have_value(re.compile("alice while bob was away"))
    converged = alices_editor.input_value()
    expect(bobs_editor).to_have_value(converged)
    assert converged.startswith("Notes: shared start\n")
    assert sorted(converged.splitlines()[1:]) == ["alice while bob was away", "bob on the train"]
    expect(status).to_have_text("All changes saved")
    assert _stored_text(server, editing.room, "notes") == converged
    # bob is back in alice's list of who is here (he said so again after reconnecting).
    expect(_others(alice).get_by_role("listitem")).to_have_text([re.compile(r"^bob — line \d$")])
