"""The AI assistant, haitch: providers that stream answers, and the prompts they are given."""

from productflo.ai.interface import AI_KINDS, AIRequest, ContextMessage, Provider, ProviderError
from productflo.ai.offline import OfflineProvider
from productflo.ai.prompts import document_title, messages_for
from productflo.ai.providers import OpenAIProvider, create_provider

__all__ = [
    "AI_KINDS",
    "AIRequest",
    "ContextMessage",
    "OfflineProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "create_provider",
    "document_title",
    "messages_for",
]
