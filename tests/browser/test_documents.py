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

PHONE = {"width": 375, "height": 740}
# The doc_updates waiting in a guest's outbox (its user id in %s), and in bob's, on a token.
_OUTBOX_UPDATES = (
    "JSON.parse(localStorage.getItem('productflo:guest:%s')).outbox"
    ".filter((message) => message.code === 'doc_update')"
)
_OUTBOX_TOKEN_UPDATES = _OUTBOX_UPDATES.replace("guest:%s", "token:bob")


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


def test_a_peer_who_goes_leaves_the_list_and_the_panel_fits_a_phone(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    _open_document(alice, "minutes")
    bobs = new_context(viewport=PHONE)
    bob = ChatPage(bobs.new_page())
    bob.goto(server, f"/?user_id=bob&room={room}&doc=minutes")  # a link to the document
    expect(_editor(bob)).to_be_editable()
    _editor(bob).press_sequentially("Minutes")
    width = bob.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide at {PHONE['width']} px"
    screenshot(bob.page, "document-phone")
    others = _others(alice).get_by_role("listitem")
    expect(others).to_have_text(["bob — line 1"])

    # bob's network goes: nobody can tell alice, so his cursor stays until the awareness
    # timeout (30 s without a word from him) drops it.
    bobs.set_offline(True)
    expect(others).to_have_count(0, timeout=45_000)
    bobs.set_offline(False)
    bob.expect_live()
    expect(others).to_have_text(["bob — line 1"])  # back: he said where he is again

    # bob leaves the page: he says so as it goes, and is off alice's list at once (well within
    # the 30 s of the awareness timeout; the margin is for a loaded machine).
    bob.page.goto("about:blank")
    expect(others).to_have_count(0, timeout=10_000)


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
    # All bob typed offline waits as one message, merged while it could not go out.
    bob.page.wait_for_function(f"() => {_OUTBOX_UPDATES % 'bob'}.length === 1")
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


def test_the_assistants_document_is_listed_for_guests_and_edited_together(
    server: ServerThread, new_context: Any, screenshot: Any
) -> None:
    """A guest cannot list a room's documents over HTTP: the assistant's answer names its
    document, live for the one who asked and in the history for one who comes later."""
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    alice.expect_live()
    alice.send("/doc Enclosure specification")
    answer = alice.log.locator(".msg.answer")
    edit = answer.get_by_role("button", name=re.compile("^Edit .* together$"))
    expect(edit).to_be_visible()
    edit.click()
    alices_editor = _editor(alice)
    expect(alices_editor).to_be_editable()
    seeded = _stored_text(server, room, _listed_docs(alice)[0])
    assert seeded.startswith("# ")
    expect(alices_editor).to_have_value(seeded)
    # The "document ready" notice in her inbox opens it too.
    alice.page.get_by_role("button", name="Close", exact=True).click()
    expect(alices_editor).to_be_hidden()
    alice.page.get_by_role("button", name="Inbox, 1 new").click()
    alice.page.locator("#inbox-list .notification").click()
    expect(alices_editor).to_have_value(seeded)

    bob = ChatPage.open(new_context(), server, "bob", room)
    bob.expect_live()
    bob.page.get_by_role("button", name="Documents", exact=True).click()
    listed = bob.page.get_by_role("list", name="Documents in this room").get_by_role("button")
    expect(listed).to_have_count(1)
    listed.focus()
    bob.page.keyboard.press("Enter")
    bobs_editor = _editor(bob)
    expect(bobs_editor).to_have_value(seeded)
    expect(bobs_editor).to_be_editable()
    # alice was there first and has not moved since: bob's arrival has her say where she is,
    # at once, before awareness renews her state (15 s after she last moved, some seconds ago).
    expect(_others(bob).get_by_role("listitem")).to_have_text(
        [re.compile(r"^alice — line \d+$")], timeout=8_000
    )
    bobs_editor.press("Control+End")
    bobs_editor.press_sequentially("\nReviewed by bob.")
    expect(alices_editor).to_have_value(seeded + "\nReviewed by bob.")
    screenshot(bob.page, "assistant-document")


def test_a_token_user_lists_the_rooms_documents_and_offline_edits_survive_closing_the_tab(
    server: ServerThread, new_context: Any
) -> None:
    room = _room()
    alice = ChatPage.open(new_context(), server, "alice", room)
    alices_editor = _open_document(alice, "agenda")
    alices_editor.press_sequentially("Weekly agenda\n1. demo\n")
    expect(alice.page.locator("#doc-status")).to_have_text("All changes saved")

    bobs = new_context()
    bob = ChatPage(bobs.new_page())
    bob.goto(server)
    bob.page.get_by_label("Access token").fill(mint(server.settings, "bob"))
    bob.page.get_by_role("button", name="Sign in with token").click()
    bob.expect_live()
    bob.page.get_by_label("Room to join").fill(room)
    bob.page.get_by_label("Room to join").press("Enter")
    bob.page.get_by_role("button", name="Documents", exact=True).click()
    # Listed by GET /rooms/{room}/docs: the title is the first line, the id under it.
    listed = bob.page.get_by_role("list", name="Documents in this room").get_by_role("button")
    expect(listed.locator("span").first).to_have_text("Weekly agenda")
    expect(listed.locator(".doc-id")).to_have_text("agenda")
    listed.click()
    bobs_editor = _editor(bob)
    expect(bobs_editor).to_have_value("Weekly agenda\n1. demo\n")
    expect(bobs_editor).to_be_editable()

    bobs.set_offline(True)
    expect(bob.connection).to_have_attribute("data-state", "offline")
    bobs_editor.press("Control+End")
    bobs_editor.press_sequentially("2. written offline\n")
    bob.page.wait_for_function(f"() => {_OUTBOX_TOKEN_UPDATES}.length > 0")
    bob.page.close()

    bobs.set_offline(False)
    again = ChatPage(bobs.new_page())
    again.goto(server)  # the profile remembers bob's token, his room and his outbox
    again.expect_live()
    expected = "Weekly agenda\n1. demo\n2. written offline\n"
    expect(alices_editor).to_have_value(expected)
    again.page.get_by_role("button", name="Documents", exact=True).click()
    expect(_editor(again)).to_have_value(expected)  # the document he had open, open again
    expect(again.page.locator("#doc-status")).to_have_text("All changes saved")
    assert _stored_text(server, room, "agenda") == expected


def test_a_long_paste_goes_out_in_pieces_that_fit_a_frame(
    server: ServerThread, new_context: Any
) -> None:
    """60,000 characters are one update of about 60 KB, over the server's frame limit (64 KiB
    with base64 and the envelope, and a frame over it closes the connection): sent in pieces."""
    editing = _both_editing(server, new_context, "pasted")
    pasted = "".join(f"line {n}: the quick brown fox\n" for n in range(2_000))
    assert len(pasted) > 60_000
    editing.alices_editor.fill(pasted)
    expect(editing.bobs_editor).to_have_value(pasted)
    expect(editing.alice.page.locator("#doc-status")).to_have_text("All changes saved")
    editing.alice.expect_live()
    assert _stored_text(server, editing.room, "pasted") == pasted


def _listed_docs(chat: ChatPage) -> list[str]:
    """The doc_ids of the documents the panel lists."""
    ids: list[str] = chat.page.locator("#doc-list button").evaluate_all(
        "buttons => buttons.map((button) => button.dataset.doc)"
    )
    return ids
