"""Handlers: consumers of the log that act on what they read rather than keep a read model,
answering events with new events (mentions, AI requests). productflo.consumers runs them."""

from __future__ import annotations

from productflo.handlers.assistant import NAME as ASSISTANT
from productflo.handlers.mentions import Mentions

# Their checkpoints' names: not rebuilt, but their lag is worth seeing (the assistant's is the
# oldest request it has not answered yet).
HANDLERS = (Mentions.name, ASSISTANT)

__all__ = ["HANDLERS"]
