"""The event log: models (pure), the store (PostgreSQL) and the tailer (following it)."""

from productflo.events.models import (
    AppendResult,
    NewEvent,
    RecordedEvent,
    idempotency_key,
    room_stream,
    user_stream,
)
from productflo.events.store import EventStore
from productflo.events.tailer import Tailer

__all__ = [
    "AppendResult",
    "EventStore",
    "NewEvent",
    "RecordedEvent",
    "Tailer",
    "idempotency_key",
    "room_stream",
    "user_stream",
]
