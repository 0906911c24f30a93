"""Prompts without any I/O: the budget keeps the newest context, the request always goes in."""

from __future__ import annotations

import pytest

from productflo.ai.interface import AI_KINDS, AIRequest, ContextMessage
from productflo.ai.prompts import (
    KIND_INSTRUCTIONS,
    alternating,
    document_title,
    estimate_tokens,
    messages_for,
)


def request(
    message: str = "What battery?",
    *,
    kind: str = "haitch_chat",
    context: tuple[ContextMessage, ...] = (),
    attached_files: tuple[str, ...] = (),
) -> AIRequest:
    return AIRequest(kind, "dave", "r1", message, attached_files, context)


def said(count: int, length: int = 40) -> tuple[ContextMessage, ...]:
    """`count` messages of about `length` characters, numbered oldest first."""
    return tuple(ContextMessage(f"user{n}", f"m{n:03d}".ljust(length, ".")) for n in range(count))


def test_the_conversation_is_system_then_context_oldest_first_then_the_request() -> None:
    context = (ContextMessage("alice", "Use a LiPo cell."), ContextMessage("bob", "Too risky."))
    messages = messages_for(request(context=context))
    assert [m["role"] for m in messages] == ["system", "user", "user", "user"]
    assert messages[1]["content"] == "alice: Use a LiPo cell."
    assert messages[2]["content"] == "bob: Too risky."
    assert messages[3]["content"] == "dave: What battery?"


def test_haitch_speaks_as_the_assistant_without_a_prefix() -> None:
    context = (ContextMessage("alice", "Ideas?"), ContextMessage("haitch", "Here are three."))
    messages = messages_for(request(context=context))
    assert messages[2] == {"role": "assistant", "content": "Here are three."}


@pytest.mark.parametrize("kind", AI_KINDS)
def test_the_system_prompt_names_haitch_and_carries_the_kind_instruction(kind: str) -> None:
    system = messages_for(request(kind=kind))[0]
    assert system["role"] == "system"
    assert "haitch" in system["content"]
    assert KIND_INSTRUCTIONS[kind] in system["content"]


def test_documentation_asks_for_a_title_heading() -> None:
    assert "# Title" in messages_for(request(kind="documentation"))[0]["content"]


def test_the_budget_keeps_the_newest_and_drops_the_oldest() -> None:
    context = said(100)  # about 13 tokens each once prefixed
    messages = messages_for(request(context=context), budget_tokens=200)
    kept = [m["content"] for m in messages[1:-1]]
    assert 10 <= len(kept) < 100
    assert kept[-1].startswith("user99: m099")
    expected = [f"user{n}: m{n:03d}" for n in range(100 - len(kept), 100)]
    assert [k.split(".")[0] for k in kept] == expected
    assert sum(estimate_tokens(m["content"]) for m in messages[1:]) <= 200


def test_a_message_that_does_not_fit_ends_the_context_even_if_older_ones_would() -> None:
    """What the model sees is an unbroken recent stretch of the room, not a sample."""
    context = (ContextMessage("old", "short"), ContextMessage("big", "x" * 2000), *said(2))
    messages = messages_for(request(context=context), budget_tokens=100)
    assert [m["content"].split(":")[0] for m in messages[1:-1]] == ["user0", "user1"]


def test_the_request_is_never_dropped_and_is_cut_to_fit() -> None:
    long_request = "word " * 5000
    messages = messages_for(request(long_request, context=said(5)), budget_tokens=100)
    assert [m["role"] for m in messages] == ["system", "user"]
    final = messages[-1]["content"]
    assert final.startswith("dave: word word")
    assert final.endswith("…")
    assert estimate_tokens(final) <= 100


def test_an_empty_request_still_asks_something() -> None:
    final = messages_for(request(""))[-1]["content"]
    assert final.startswith("dave: (no text")


def test_attached_files_are_listed_by_name_and_survive_the_cut() -> None:
    files = ("spec.pdf", "sketch.png")
    final = messages_for(request("x" * 5000, attached_files=files), budget_tokens=100)[-1]
    assert "- spec.pdf\n- sketch.png" in final["content"]
    assert final["content"].startswith("dave: xxx")


def test_the_title_is_the_first_heading_of_the_document() -> None:
    content = "Intro text\n```\n# not a heading: code\n```\n#   Battery study  #\n# Second"
    assert document_title(request("Write it up"), content) == "Battery study"


def test_without_a_heading_the_title_is_the_first_line_of_the_request() -> None:
    text = "\n  # Power budget for the tracker  \nwith details on the second line"
    assert document_title(request(text), "no heading here") == "Power budget for the tracker"


def test_a_long_title_is_cut_to_80_characters() -> None:
    title = document_title(request("a" * 200), "")
    assert len(title) == 80
    assert title.endswith("…")


def test_with_nothing_to_go_on_the_document_is_untitled() -> None:
    assert document_title(request("  "), "") == "Untitled document"


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        request(kind="poem")


def test_alternating_joins_neighbours_of_one_role_and_keeps_the_order() -> None:
    context = (
        ContextMessage("alice", "a1"),
        ContextMessage("bob", "b1"),
        ContextMessage("haitch", "h1"),
        ContextMessage("haitch", "h2"),
    )
    joined = alternating(messages_for(request("q", context=context)))
    assert [m["role"] for m in joined] == ["system", "user", "assistant", "user"]
    assert joined[1]["content"] == "alice: a1\n\nbob: b1"
    assert joined[2]["content"] == "h1\n\nh2"
    assert joined[3]["content"] == "dave: q"
