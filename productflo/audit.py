"""The audit: events from the log by room, user, code and time, oldest first, a page at a time.

One module answers both `GET /admin/events` and `productflo audit`, so that the two print the same
objects (SPEC section 3):

    {"event_id", "type", "stream", "code", "user_id", "room_id", "data", "metadata", "recorded_at"}

- `event_id` is the event's position in the log (what clients see as `event_id`).
- `code` is what an operator searches by: the message code for a client message (the event's
  `type`: `chat`, `join`, `idea`, ...), and for a rejected message (type `rejected`) the
  `error_code` it was refused with (`INVALID_JSON`, `UNSUPPORTED_MESSAGE_TYPE`, ...). The filter
  `code` matches that value, so `code=INVALID_JSON` finds the frames that were not JSON.
- `user_id` is `metadata.user_id`, the user who sent the message; `room_id` is the room of a
  `room:<id>` stream, else null.
- `recorded_at` is ISO 8601 in UTC with a `Z`.
- A document's update (`doc_update`, SPEC section 7) also has `change`: what it did to the
  document's text, as a Yjs delta (`[{"retain": 12}, {"insert": "warm"}, {"delete": 3}]`),
  worked out by applying it to the document as it stood before it. With the filter `doc_id`
  (and `room_id`), the audit is a document's edit history: who changed what, when.

Paging is by cursor: `after` is the last `event_id` already seen; a page's `next_after` is its last
`event_id` when more events match, else None. Positions only grow, so paging never skips or
repeats an event, even while the log grows.

The reads themselves are the log's (productflo.events.search): this module says what an operator
may ask and what they are shown.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Self

import asyncpg
import asyncpg.pool
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from productflo.audience import DOC_UPDATE
from productflo.documents import State
from productflo.envelopes import Identifier, iso
from productflo.errors import StoreError, StoreUnavailable
from productflo.events.models import MAX_POSITION, JsonObject, RecordedEvent, room_stream
from productflo.events.search import Match, read_matching
from productflo.events.store import EventStore
from productflo.jsontext import is_storable
from productflo.projections.documents import state_before

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
REJECTED = "rejected"

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresError,
)


def parse_time(value: object) -> datetime:
    """An ISO 8601 timestamp (`2026-11-26T12:00:00Z`, `2026-11-26`, ...); no offset means UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 timestamp (e.g. 2026-11-26T12:00:00Z)"
            ) from None
    else:
        raise ValueError("expected an ISO 8601 timestamp (e.g. 2026-11-26T12:00:00Z)")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, BeforeValidator(parse_time)]


def _storable(value: str) -> str:
    # Text PostgreSQL cannot hold is no filter of anything it holds: a 422, not a failed query.
    if not is_storable(value):
        raise ValueError("may not contain NUL characters or lone surrogates")
    return value


UserId = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_storable)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_storable)]


class AuditFilter(BaseModel):
    """Which events, and which page of them. Every filter given must match (AND).

    `since` is inclusive and `until` exclusive (`since <= recorded_at < until`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    room_id: Identifier | None = None
    user_id: UserId | None = None
    code: Code | None = None
    doc_id: Identifier | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    after: Annotated[int, Field(ge=0, le=MAX_POSITION)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be earlier than until")
        return self


@dataclass(frozen=True)
class AuditPage:
    events: list[JsonObject]  # audit objects, oldest first
    next_after: int | None  # the cursor for the next page; None when nothing more matches

    def as_json(self) -> JsonObject:
        return {"events": self.events, "next_after": self.next_after}


def code_of(type_: str, data: JsonObject) -> str:
    """The audit code: a rejected message's error code, else the type (search.CODE_SQL)."""
    if type_ == REJECTED:
        error_code = data.get("error_code")
        return error_code if isinstance(error_code, str) else type_
    return type_


def audit_object(event: RecordedEvent) -> JsonObject:
    """An event as the audit shows it (SPEC section 3)."""
    return {
        "event_id": event.position,
        "type": event.type,
        "stream": event.stream,
        "code": code_of(event.type, event.data),
        "user_id": event.user_id,
        "room_id": event.room_id,
        "data": event.data,
        "metadata": event.metadata,
        "recorded_at": iso(event.recorded_at),
    }


Source = EventStore | asyncpg.Pool | asyncpg.Connection
_Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def query(source: Source, audit_filter: AuditFilter) -> AuditPage:
    """One page of the events that match, oldest first.

    `source` is the server's EventStore, a pool, or a connection; its connections must decode
    jsonb (as those of productflo.events.store do). Raises StoreUnavailable when the database
    cannot answer, StoreError when it holds no event log.
    """
    try:
        if isinstance(source, asyncpg.Connection):
            return await _query(source, audit_filter)
        # A server's audit reads from its hot standby when it has one (EventStore.read_pool).
        pool = source.read_pool if isinstance(source, EventStore) else source
        async with pool.acquire() as connection:
            return await _query(connection, audit_filter)
    except asyncpg.UndefinedTableError as error:
        raise StoreError("the database holds no event log: run `productflo db upgrade`") from error
    except _DRIVER_ERRORS as error:
        raise StoreUnavailable("the database is unreachable") from error


async def pages(
    source: Source, audit_filter: AuditFilter, total: int, page_size: int = MAX_LIMIT
) -> AsyncIterator[AuditPage]:
    """Pages of at most `page_size` events from `audit_filter.after` on, until `total` events
    or the end of what matches. The last page's `next_after` says where to continue when more
    events match than `total` (`audit_filter.limit` is not used)."""
    remaining, cursor = total, audit_filter
    while remaining > 0:
        size = min(remaining, page_size, MAX_LIMIT)
        page = await query(source, cursor.model_copy(update={"limit": size}))
        yield page
        remaining -= len(page.events)
        if page.next_after is None:
            return
        cursor = cursor.model_copy(update={"after": page.next_after})


async def _query(connection: _Connection, audit_filter: AuditFilter) -> AuditPage:
    match = Match(
        after=audit_filter.after,
        stream=room_stream(audit_filter.room_id) if audit_filter.room_id is not None else None,
        user_id=audit_filter.user_id,
        code=audit_filter.code,
        doc_id=audit_filter.doc_id,
        since=audit_filter.since,
        until=audit_filter.until,
    )
    found = await read_matching(connection, match, audit_filter.limit + 1)
    events = [audit_object(event) for event in found[: audit_filter.limit]]
    await _add_changes(connection, found[: audit_filter.limit], events)
    more = len(found) > audit_filter.limit
    return AuditPage(events, events[-1]["event_id"] if more else None)


async def _add_changes(
    connection: _Connection, found: list[RecordedEvent], events: list[JsonObject]
) -> None:
    """Give each document update of the page its `change`: each document is loaded once, as it
    stood before its first update on the page, and the page's updates applied to it in order."""
    states: dict[tuple[str, str], State] = {}
    for event, shown in zip(found, events, strict=True):
        doc = event.data.get("doc_id")
        update = event.data.get("update")
        if event.type != DOC_UPDATE or event.room_id is None or not isinstance(doc, str):
            continue
        key = (event.room_id, doc)
        if key not in states:
            states[key] = await state_before(connection, *key, event.position)
        try:
            shown["change"] = states[key].change(base64.b64decode(str(update)))
        except ValueError:  # not an update (it could not have been appended): say nothing
            shown["change"] = None


# -- the table for people (`productflo audit --format table`) -------------------------------------

_TABLE_COLUMNS = (  # title, width, right-aligned
    ("EVENT_ID", 10, True),
    ("RECORDED_AT", 24, False),
    ("TYPE", 13, False),
    ("CODE", 24, False),
    ("ROOM", 14, False),
    ("USER", 14, False),
)
SUMMARY_WIDTH = 48


def table_header() -> str:
    return _table_line([title for title, _, _ in _TABLE_COLUMNS], "SUMMARY")


def table_line(event: JsonObject) -> str:
    """One audit object as a fixed-width line: long values are cut short with an ellipsis."""
    recorded = str(event["recorded_at"])
    if len(recorded) > 24:  # microseconds: milliseconds are enough to read
        recorded = recorded[:23] + "Z"
    cells = [
        str(event["event_id"]),
        recorded,
        str(event["type"]),
        str(event["code"]),
        event["room_id"] or "-",
        event["user_id"] or "-",
    ]
    return _table_line(cells, summary(event))


def summary(event: JsonObject) -> str:
    """A short, one-line account of an event's data: the message text, or the refused frame
    (its error code is in the CODE column)."""
    data = event["data"]
    message = data.get("message") if isinstance(data, dict) else None
    if event["type"] == REJECTED and isinstance(data, dict):
        text = str(data.get("frame", ""))
    elif event.get("change") is not None:
        text = f"{data.get('doc_id')}: {describe_change(event['change'])}"
    elif isinstance(message, str):
        text = message
    elif not data:
        text = "-"
    else:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return _cut(" ".join(text.split()), SUMMARY_WIDTH)


def describe_change(delta: list[JsonObject]) -> str:
    """A Yjs text delta for people: `+"warm" at 12, -3 at 20`."""
    parts, at = [], 0
    for op in delta:
        if "retain" in op:
            at += int(op["retain"])
        elif "insert" in op:
            inserted = str(op["insert"])
            parts.append(f"+{json.dumps(inserted, ensure_ascii=False)} at {at}")
            at += len(inserted)
        elif "delete" in op:
            parts.append(f"-{op['delete']} at {at}")
    return ", ".join(parts) or "no change to the text"


def _table_line(cells: list[str], last: str) -> str:
    parts = []
    for cell, (_, width, right) in zip(cells, _TABLE_COLUMNS, strict=True):
        value = _cut(" ".join(cell.split()), width)
        parts.append(value.rjust(width) if right else value.ljust(width))
    return " ".join([*parts, last]).rstrip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
