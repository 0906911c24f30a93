"""Checkpoints: how far each consumer of the log has applied it (`projection_checkpoints`).

A projection moves its checkpoint in the transaction that applies a batch, so each takes the
connection that transaction runs on. The head of the log (`log_head`) is read here too: a new
consumer may start from it, and a checkpoint's lag is measured against it.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own, one borrowed from the pool, or the pool itself (one statement).
Connection = asyncpg.Connection | PoolConnectionProxy
Source = Connection | asyncpg.Pool


async def head(source: Source) -> int:
    """The position of the newest committed event (0 for an empty log)."""
    return int(await source.fetchval("SELECT position FROM log_head"))


async def checkpoint(source: Source, name: str) -> int:
    """Where the consumer `name` stands (0 if it never started)."""
    value = await source.fetchval(
        "SELECT position FROM projection_checkpoints WHERE name = $1", name
    )
    return int(value) if value is not None else 0


async def create_checkpoint(source: Source, name: str, *, at_head: bool = False) -> bool:
    """Give `name` a checkpoint at 0 (or at the head of the log) unless it has one; whether it
    was created."""
    start = "(SELECT position FROM log_head)" if at_head else "0"
    created = await source.fetchval(
        f"""
        INSERT INTO projection_checkpoints (name, position) VALUES ($1, {start})
        ON CONFLICT (name) DO NOTHING RETURNING true
        """,
        name,
    )
    return bool(created)


async def lock_checkpoint(connection: Connection, name: str) -> int:
    """The checkpoint, locked until the transaction ends: whoever comes second waits for the
    first to apply (or rebuild) and then finds the checkpoint moved."""
    value = await connection.fetchval(
        "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE", name
    )
    return int(value) if value is not None else 0


async def move_checkpoint(connection: Connection, name: str, position: int) -> None:
    """Set the checkpoint (in the transaction that applied up to `position`)."""
    await connection.execute(
        "UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE name = $1",
        name,
        position,
    )


async def advance_checkpoint(source: Source, name: str, position: int) -> None:
    """Move the checkpoint forward to `position`, never back (consumers that save as they go)."""
    await source.execute(
        "UPDATE projection_checkpoints SET position = greatest(position, $2), "
        "updated_at = now() WHERE name = $1",
        name,
        position,
    )
