"""What the assistant is told: the system prompt, the room's context within a budget, titles. Pure.

A model's context window is finite and a busy room is not, so `messages_for` spends a token
budget on the newest messages and drops the oldest first; the request itself always goes in.
"""

from __future__ import annotations

import math

from productflo.ai.interface import AIRequest, ContextMessage

ASSISTANT_ID = "haitch"
TITLE_LENGTH = 80
UNTITLED = "Untitled document"

SYSTEM_PROMPT = (
    "You are haitch, the product-development assistant of ProductFlo, working inside a team's "
    "chat room. The team designs physical and digital products together. Messages from the room "
    "are given as `user_id: text`; your own earlier answers appear as assistant messages. Be "
    "concrete and practical, build on what the team has already said and name who said it when "
    "that helps, say what you are unsure about, and never invent facts about the team's product. "
    "Attached files are given by name only: you cannot read their contents, so do not claim to. "
    "Answer in markdown."
)

KIND_INSTRUCTIONS = {
    "haitch_chat": (
        "Answer the last message conversationally and briefly, as a helpful member of the team."
    ),
    "idea": (
        "Propose product ideas for the request as a numbered list. For each idea give a short "
        "bold name, one or two sentences on what it is, and why it could work for these users."
    ),
    "documentation": (
        "Write a markdown document for the request. Its first line must be a `# Title` heading. "
        "Use sections such as Overview, Goals, Requirements, Open questions, and draw on the "
        "room's discussion."
    ),
    "engineering": (
        "Give a structured engineering answer with the sections Approach, Components, Risks and "
        "Next steps, each as a short list; add trade-offs where the choice is not obvious."
    ),
}


def estimate_tokens(text: str) -> int:
    """A model-independent estimate: about four characters a token."""
    return math.ceil(len(text) / 4)


def system_prompt(kind: str) -> str:
    return f"{SYSTEM_PROMPT}\n\n{KIND_INSTRUCTIONS[kind]}"


def messages_for(request: AIRequest, budget_tokens: int = 3000) -> list[dict[str, str]]:
    """Chat-completions messages: system, the newest context that fits, then the request.

    The budget covers the conversation (context and request); the fixed system prompt is outside
    it. Context is kept newest first and stops at the first message that does not fit, so what the
    model sees is an unbroken recent stretch of the room.
    """
    final = {"role": "user", "content": request_content(request, budget_tokens)}
    remaining = budget_tokens - estimate_tokens(final["content"])
    kept: list[dict[str, str]] = []
    for message in reversed(request.context):
        rendered = context_message(message)
        cost = estimate_tokens(rendered["content"])
        if cost > remaining:
            break
        kept.append(rendered)
        remaining -= cost
    kept.reverse()
    return [{"role": "system", "content": system_prompt(request.kind)}, *kept, final]


def alternating(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Neighbouring messages of one role joined into one message: the chat templates of some
    models (Mistral's, served by vLLM or llama.cpp) refuse two user turns in a row."""
    joined: list[dict[str, str]] = []
    for message in messages:
        if joined and joined[-1]["role"] == message["role"] != "system":
            content = f"{joined[-1]['content']}\n\n{message['content']}"
            joined[-1] = {"role": message["role"], "content": content}
        else:
            joined.append(dict(message))
    return joined


def context_message(message: ContextMessage) -> dict[str, str]:
    if message.user_id == ASSISTANT_ID:
        return {"role": "assistant", "content": message.text}
    return {"role": "user", "content": f"{message.user_id}: {message.text}"}


def request_content(request: AIRequest, budget_tokens: int) -> str:
    """The request as the final user message, its text cut so that the whole fits the budget."""
    files = ""
    if request.attached_files:
        listed = "\n".join(f"- {name}" for name in request.attached_files)
        files = f"\n\nAttached files (names only):\n{listed}"
    text = request.message.strip() or "(no text: answer from the conversation so far)"
    head = f"{request.user_id}: "
    room = max(budget_tokens * 4 - len(head) - len(files), 1)
    if len(text) > room:
        text = text[: room - 1] + "…"
    return f"{head}{text}{files}"


def document_title(request: AIRequest, content: str) -> str:
    """The document's title: its first `# ` heading, else the request's first line."""
    return heading(content) or title_from_text(request.message) or UNTITLED


def heading(content: str) -> str | None:
    """The first level-one markdown heading outside code fences, if any."""
    fenced = False
    for line in content.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and stripped.startswith("# "):
            title = _shorten(stripped[2:].strip().rstrip("#").strip())
            if title:
                return title
    return None


def title_from_text(text: str) -> str | None:
    """The first non-empty line of a request, without markdown heading marks, at most 80 chars."""
    for line in text.splitlines():
        title = _shorten(line.strip().lstrip("#").strip())
        if title:
            return title
    return None


def _shorten(text: str, limit: int = TITLE_LENGTH) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"
