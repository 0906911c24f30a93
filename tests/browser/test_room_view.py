"""room.js and markdown.js in Chromium, fed envelopes in the orders the network may deliver them:
the races a live server produces only sometimes, produced every time."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ServerThread

# Feeds `envelopes` ([origin, envelope] pairs) to a fresh RoomView of alice's; what it shows.
FEED = """async (envelopes) => {
  const {RoomView} = await import('/static/room.js');
  const room = new RoomView('r', 'alice', {needOlder() {}});
  document.body.append(room.list);
  room.list.hidden = false;
  for (const [origin, message] of envelopes) {
    if (origin === 'piece') room.piece(message);
    else if (origin === 'page') room.page(message);
    else if (origin === 'unsent') room.unsentLine(message, 'waiting to send');
    else room.add(message, origin);
  }
  return [...room.list.querySelectorAll('.msg')].map(
    (line) => [line.className, line.querySelector('.text').textContent]);
}"""


def chat(event_id: int, text: str, user: str = "bob", **extra: Any) -> dict[str, Any]:
    return {
        "status": "success",
        "code": "chat_response",
        "user_id": user,
        "room_id": "r",
        "timestamp": "2026-11-26T10:30:45.120Z",
        "data": {"message": text},
        "event_id": event_id,
        **extra,
    }


def answer(event_id: int, request: int, text: str) -> dict[str, Any]:
    reply = chat(event_id, text, "haitch")
    reply["data"] = {"message": text, "sender": "haitch", "in_reply_to": {"event_id": request}}
    return reply


def piece(request: int, sequence: int, delta: str) -> dict[str, Any]:
    return {"in_reply_to": request, "sequence": sequence, "delta": delta, "step": "stream"}


@pytest.fixture
def feed(server: ServerThread, new_context: Any) -> Any:
    page = new_context().new_page()
    page.goto(server.http + "/")

    def run(*envelopes: tuple[str, dict[str, Any]]) -> list[list[str]]:
        shown: list[list[str]] = page.evaluate(FEED, [list(e) for e in envelopes])
        return shown

    return run


def test_a_stored_answer_that_overtakes_its_pieces_is_shown_once(feed: Any) -> None:
    shown = feed(
        ("live", answer(11, 10, "Polycarbonate with a gasket.")),
        ("piece", piece(10, 0, "Polycarbonate")),
        ("piece", piece(10, 1, " with a gasket.")),
    )
    assert shown == [["msg answer", "Polycarbonate with a gasket."]]


def test_pieces_grow_one_bubble_that_the_stored_answer_completes(feed: Any) -> None:
    shown = feed(
        ("piece", piece(10, 0, "Poly")),
        ("piece", piece(10, 1, "carbonate")),
        ("live", answer(11, 10, "Polycarbonate.")),
        ("history", answer(11, 10, "Polycarbonate.")),
    )
    assert shown == [["msg answer", "Polycarbonate."]]


def test_events_are_shown_once_in_log_order_however_they_arrive(feed: Any) -> None:
    page = {"events": [chat(3, "three"), chat(5, "five")], "has_more": False}
    shown = feed(
        ("live", chat(7, "seven")),
        ("replay", chat(5, "five")),
        ("page", page),
        ("live", chat(7, "seven")),
    )
    assert [text for _, text in shown] == ["three", "five", "seven"]


def test_an_unsent_message_becomes_its_stored_event_once(feed: Any) -> None:
    mine = {"code": "chat", "room_id": "r", "client_msg_id": "c-1", "data": {"message": "hi"}}
    shown = feed(
        ("unsent", mine),
        ("live", chat(4, "earlier")),
        ("replay", chat(9, "hi", "alice", client_msg_id="c-1")),
        ("live", chat(9, "hi", "alice", client_msg_id="c-1")),  # the resend's answer
    )
    assert shown == [["msg chat", "earlier"], ["msg chat own", "hi"]]


def test_markdown_is_rendered_from_text_only(server: ServerThread, new_context: Any) -> None:
    page = new_context().new_page()
    page.goto(server.http + "/")
    source = (
        "# Title\n\n<script>window.__ran = 1</script> **bold** [x](javascript:alert(1)) "
        "[ok](https://example.com)\n\n- <b>item</b>\n\n```\n<i>code</i>\n```"
    )
    tags = page.evaluate(
        """async (source) => {
          const {render} = await import('/static/markdown.js');
          const box = document.createElement('div');
          box.append(render(source));
          document.body.append(box);
          return [...box.querySelectorAll('*')].map((node) =>
            node.tagName === 'A' ? `A ${node.getAttribute('href')}` : node.tagName);
        }""",
        source,
    )
    assert tags == ["H3", "P", "STRONG", "A https://example.com", "UL", "LI", "PRE", "CODE"]
    assert page.evaluate("window.__ran") is None
