"""Mentions: a chat message naming `@user_id` notifies that user.

The notification is an event in the user's own stream, so it is delivered live to their
connections and replayed when they come back, like everything else. The handler keeps a
checkpoint like a projection; its notification ids are derived from the message and the user, so
a batch handled again after a crash appends nothing twice.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from productflo.consumers import Transactional
from productflo.events.checkpoints import Connection
from productflo.events.models import NewEvent, RecordedEvent, user_stream
from productflo.events.store import EventStore

_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_][A-Za-z0-9_.:+|=~\-]*)")
_TRAILING = ".:-~=|+"
_NAMESPACE = uuid.UUID("9b2f5a64-3c1e-4d7a-8e90-55d1a0c4b7f3")
EXCERPT = 280


def mentioned(text: str) -> list[str]:
    """The user ids a message mentions, in order, each once (`@alice,` mentions `alice`)."""
    found: list[str] = []
    for match in _MENTION.finditer(text):
        user = match.group(1).rstrip(_TRAILING)
        if user and user not in found:
            found.append(user)
    return found


def notifications_for(event: RecordedEvent) -> list[NewEvent]:
    """The mention notifications a chat event causes (none for the sender themself)."""
    text = event.data.get("message")
    if event.type != "chat" or not isinstance(text, str) or event.room_id is None:
        return []
    by = event.user_id
    return [
        NewEvent(
            user_stream(user),
            "notification",
            {
                "message": f"{by} mentioned you in {event.room_id}",
                "details": {
                    "kind": "mention",
                    "room_id": event.room_id,
                    "by": by,
                    "event_id": event.position,
                    "text": text[:EXCERPT],
                },
            },
            {"user_id": by, "causation_id": str(event.event_id)},
            uuid.uuid5(_NAMESPACE, f"{event.event_id}:{user}"),
        )
        for user in mentioned(text)
        if user != by
    ]


class Mentions(Transactional):
    """Owns no tables. A batch's notifications are committed (through the store, which stores each
    id once) before the checkpoint moves past the batch."""

    name = "handler:mentions"

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def apply(
        self, connection: Connection, events: Sequence[RecordedEvent], suffix: str
    ) -> None:
        new = [n for event in events for n in notifications_for(event)]
        if new:
            await self._store.append(new)
