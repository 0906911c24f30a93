"""append_events() skips a join implied by a message that is already stored.

A message sent to a room its sender is not in is appended with a `join` before it (the implicit
join), in one batch. A resend of that message (the same `client_msg_id`, e.g. after a reconnect)
is answered with the stored original and appends nothing; but its join has a fresh event id, and
was appended again: a user who had left since was put back in the room by a retry. The session
now names the message in the join's metadata (`implied_by`: the message's event id), and the
function skips such a join when that message is stored. A skipped event comes back with
`skipped` true (neither written nor refused).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0008"
down_revision = "0007"
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
            refused boolean, skipped boolean
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
            ), implied AS (
                -- Joins implied by a message that is already stored: a resend joins nobody.
                SELECT i.n FROM input i
                WHERE i.metadata->>'implied_by' IN (SELECT x.event_id::text FROM existing x)
            ), firsts AS (
                -- A key repeated inside the batch is written once, at its first place.
                SELECT DISTINCT ON (i.id) i.* FROM input i
                WHERE i.id NOT IN (SELECT x.event_id FROM existing x)
                  AND i.n NOT IN (SELECT m.n FROM implied m)
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
                   x.event_id IS NULL AND ins.event_id IS NULL AND m.n IS NULL,
                   m.n IS NOT NULL
            FROM input i
            LEFT JOIN inserted ins ON ins.event_id = i.id
            LEFT JOIN fresh f ON f.id = i.id
            LEFT JOIN existing x ON x.event_id = i.id
            LEFT JOIN implied m ON m.n = i.n
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
    """Back to migration 0006's function, which appends an implied join whatever its message
    (its upgrade drops this one first)."""
    path = Path(__file__).with_name("0006_secure_rooms_in_append.py")
    spec = importlib.util.spec_from_file_location("productflo_migration_0006", path)
    assert spec is not None and spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    previous.upgrade()
