"""Filtered reads of the whole log, in position order: what the audit pages through.

Every filter is an index range read in position order (migrations 0001 and 0005), so a page costs
about the same on a log of millions of events as on an empty one. A time range is turned into a
position range first: `recorded_at` grows with position (append_events() takes it under the head
lock, migration 0003), so one probe at each end of the `recorded_at` index gives the first and
the last position, and the filter then reads the position range like any other. The time
predicates still apply to every row, so a result is never outside the range asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from productflo.events.checkpoints import Connection
from productflo.events.models import RecordedEvent

# The audit code of an event in SQL. It must stay identical to the expression of the index
# events_audit_code (migration 0005): the planner uses the index only for the same expression.
CODE_SQL = "CASE WHEN type = 'rejected' THEN data->>'error_code' ELSE type END"

_COLUMNS = "position, event_id, stream, version, type, data, metadata, recorded_at"
_FIRST_AT_OR_AFTER = """
    SELECT position FROM events WHERE recorded_at >= $1 ORDER BY recorded_at, position LIMIT 1
"""
_LAST_BEFORE = """
    SELECT position FROM events WHERE recorded_at < $1
    ORDER BY recorded_at DESC, position DESC LIMIT 1
"""


@dataclass(frozen=True)
class Match:
    """Which events: every condition given must hold (AND). `since` is inclusive, `until`
    exclusive; `code` is the audit code (CODE_SQL)."""

    after: int = 0
    stream: str | None = None
    user_id: str | None = None
    code: str | None = None
    doc_id: str | None = None  # a collaborative document's `data.doc_id`
    since: datetime | None = None
    until: datetime | None = None


async def read_matching(connection: Connection, match: Match, limit: int) -> list[RecordedEvent]:
    """The first `limit` events that match, oldest first."""
    # asyncpg prepares and caches statements, and after five runs PostgreSQL may switch one to
    # a generic plan, made for no value in particular. Values of one filter differ by orders of
    # magnitude in frequency (a busy user, a rare error code): plan each query for its values.
    async with connection.transaction(readonly=True):
        await connection.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        bounds = await _position_bounds(connection, match)
        if bounds is None:
            return []
        sql, args = _select(match, *bounds, limit)
        rows = await connection.fetch(sql, *args)
    return [RecordedEvent(**dict(row)) for row in rows]


async def _position_bounds(connection: Connection, match: Match) -> tuple[int, int | None] | None:
    """The positions to read: after the first (exclusive) up to the second (inclusive; None for
    the head of the log), or None when the time range holds no event."""
    after, last = match.after, None
    if match.since is not None:
        first = await connection.fetchval(_FIRST_AT_OR_AFTER, match.since)
        if first is None:
            return None
        after = max(after, first - 1)
    if match.until is not None:
        last = await connection.fetchval(_LAST_BEFORE, match.until)
        if last is None or last <= after:
            return None
    return after, last


def _select(match: Match, after: int, last: int | None, limit: int) -> tuple[str, list[Any]]:
    """The SELECT with only the conditions given, and its arguments."""
    args: list[Any] = [after]
    where = ["position > $1"]

    def condition(template: str, value: Any) -> None:
        args.append(value)
        where.append(template.format(f"${len(args)}"))

    if last is not None:
        condition("position <= {}", last)
    if match.stream is not None:
        condition("stream = {}", match.stream)
    if match.user_id is not None:
        condition("metadata->>'user_id' = {}", match.user_id)
    if match.code is not None:
        condition(f"{CODE_SQL} = {{}}", match.code)
    if match.doc_id is not None:
        condition("data->>'doc_id' = {}", match.doc_id)
    if match.since is not None:
        condition("recorded_at >= {}", match.since)
    if match.until is not None:
        condition("recorded_at < {}", match.until)
    args.append(limit)
    sql = (
        f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} "
        f"ORDER BY position LIMIT ${len(args)}"
    )
    return sql, args
