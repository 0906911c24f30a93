"""append_events() refuses anonymous events in secure rooms, under the head lock.

A room is secure when its first event came from `/ws/secure` (`metadata.authenticated` true).
Each server process checks that before appending (productflo/access.py), but two processes
accepting a brand-new room's first messages at the same instant could each see an empty room, and
an anonymous message could be stored in what became a secure room. The head lock serializes
appends, so checking here, where the room's first event is known for certain (stored, or earlier
in the same batch), closes that window. A refused event is not stored; its row comes back with
`refused` true (and the caller answers FORBIDDEN).

Events without `metadata.authenticated` (the assistant's answers, notifications) are not checked.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SIGNATURE = "append_events(uuid[], text[], text[], text[], text[])"


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {_SIGNATURE}")
    op.execute(
        """
        CREATE FUNCTION append_events(
            p_ids uuid[], p_streams text[], p_types text[], p_data text[], p_metadata text[]
        )
        RETURNS TABLE (
            n bigint, "position" bigint, version bigint, recorded_at timestamptz,
            duplicate boolean, stream text, type text, data jsonb, metadata jsonb,
            refused boolean
        )
        LANGUAGE plpgsql
        -- A generic plan cannot see how few ids the arrays hold and may scan the whole log.
        SET plan_cache_mode = force_custom_plan
        AS $fn$
        #variable_conflict use_column
        DECLARE
            head bigint;
            new_head bigint;
            recorded timestamptz;
        BEGIN
            -- The row lock that makes commit order equal position order (events/store.py).
            SELECT l.position INTO head FROM log_head l FOR UPDATE;
            -- Taken after the lock, so that recorded_at grows with position across processes.
            recorded := clock_timestamp();

            RETURN QUERY
            WITH input AS (
                SELECT t.id, t.stream, t.type, t.data, t.metadata::jsonb AS metadata, t.n
                FROM unnest(p_ids, p_streams, p_types, p_data, p_metadata)
                     WITH ORDINALITY AS t(id, stream, type, data, metadata, n)
            ), existing AS (
                SELECT e.* FROM events e WHERE e.event_id = ANY(p_ids)
            ), firsts AS (
                -- A key repeated inside the batch is written once, at its first place.
                SELECT DISTINCT ON (i.id) i.* FROM input i
                WHERE i.id NOT IN (SELECT x.event_id FROM existing x)
                ORDER BY i.id, i.n
            ), openers AS (
                -- Whether each room in the batch is secure: its first event, stored or, for a
                -- new room, the first of this batch.
                SELECT s.stream,
                       coalesce(
                           (SELECT e.metadata->'authenticated' = 'true'::jsonb FROM events e
                            WHERE e.stream = s.stream AND e.version = 1),
                           (SELECT f.metadata->'authenticated' = 'true'::jsonb FROM firsts f
                            WHERE f.stream = s.stream ORDER BY f.n LIMIT 1),
                           false
                       ) AS secure
                FROM (SELECT DISTINCT f.stream FROM firsts f WHERE f.stream LIKE 'room:%') s
            ), admitted AS (
                SELECT f.* FROM firsts f LEFT JOIN openers o ON o.stream = f.stream
                WHERE NOT (coalesce(o.secure, false)
                           AND f.metadata->'authenticated' IS NOT DISTINCT FROM 'false'::jsonb)
            ), stream_heads AS (
                SELECT s.stream,
                       coalesce((SELECT max(e.version) FROM events e WHERE e.stream = s.stream), 0)
                         AS version
                FROM (SELECT DISTINCT a.stream FROM admitted a) s
            ), fresh AS (
                SELECT a.*,
                       head + row_number() OVER (ORDER BY a.n) AS new_position,
                       h.version + row_number() OVER (PARTITION BY a.stream ORDER BY a.n)
                         AS new_version
                FROM admitted a JOIN stream_heads h ON h.stream = a.stream
            ), inserted AS (
                INSERT INTO events (position, event_id, stream, version, type, data, metadata,
                                    recorded_at)
                SELECT new_position, id, stream, new_version, type, data::jsonb, metadata,
                       recorded
                FROM fresh
                RETURNING events.event_id, events.position, events.version
            )
            SELECT i.n,
                   coalesce(ins.position, x.position),
                   coalesce(ins.version, x.version),
                   coalesce(x.recorded_at, recorded),
                   NOT (ins.event_id IS NOT NULL AND f.n = i.n),
                   x.stream, x.type, x.data, x.metadata,
                   x.event_id IS NULL AND ins.event_id IS NULL
            FROM input i
            LEFT JOIN inserted ins ON ins.event_id = i.id
            LEFT JOIN fresh f ON f.id = i.id
            LEFT JOIN existing x ON x.event_id = i.id
            ORDER BY i.n;

            -- max() on the primary key is one index probe, however stale the statistics.
            SELECT max(e.position) INTO new_head FROM events e;
            IF new_head > head THEN
                UPDATE log_head SET position = new_head;
                PERFORM pg_notify('productflo_events', new_head::text);
            END IF;
        END
        $fn$
        """
    )


def downgrade() -> None:
    """Back to migration 0003's function, which appends without the check."""
    op.execute(f"DROP FUNCTION {_SIGNATURE}")
    path = Path(__file__).with_name("0003_append_function.py")
    spec = importlib.util.spec_from_file_location("productflo_migration_0003", path)
    assert spec is not None and spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    previous.upgrade()
