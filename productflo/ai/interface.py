"""What the assistant asks of a source of answers: an `AIRequest` in, text out, `ProviderError`.

Every other module of `productflo.ai` imports this one, and it imports none of them, so the
arrows point one way: `prompts` (pure) uses only this; `offline` this and `prompts`; `providers`
(OpenAI-compatible, and the choice of one) all three; the assistant this and `prompts`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from productflo.errors import ProductfloError

AI_KINDS = ("haitch_chat", "idea", "documentation", "engineering")


@dataclass(frozen=True)
class ContextMessage:
    user_id: str  # who said it; "haitch" for the assistant's earlier answers
    text: str


@dataclass(frozen=True)
class AIRequest:
    kind: str  # one of AI_KINDS
    user_id: str  # the requester
    room_id: str
    message: str  # the request text (data.message; may be "")
    attached_files: tuple[str, ...] = ()  # file names the client attached
    context: tuple[ContextMessage, ...] = ()  # the room's recent messages, oldest first

    def __post_init__(self) -> None:
        if self.kind not in AI_KINDS:
            raise ValueError(f"unknown AI request kind {self.kind!r}")


class ProviderError(ProductfloError):
    """The provider failed or timed out (AI_PROVIDER_ERROR).

    str(error) is safe to show a client: no keys, URLs, or stack text.
    """


class Provider(Protocol):
    """What the AI handler needs of a source of answers."""

    name: str  # "offline" | "openai"
    model: str  # the model name used ("offline" for the offline one)

    def stream(self, request: AIRequest) -> AsyncIterator[str]:
        """The answer, piece by piece; ProviderError when it cannot be had."""
        ...

    async def aclose(self) -> None: ...
