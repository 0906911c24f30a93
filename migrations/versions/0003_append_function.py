"""append_events(): a whole group-commit batch in one statement, one round trip.

The appender used to send eight statements per transaction (BEGIN, lock the head, look up known
ids, look up stream versions, insert, move the head, notify, COMMIT), each a round trip made while
holding the head lock. As one function called in autocommit, the batch is one round trip and the
lock is held only for the time PostgreSQL itself needs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION append_events(
            p_ids uuid[], p_streams text[], p_types text[], p_data text[], p_metadata text[]
        )
        RETURNS TABLE (
            n bigint, "position" bigint, version bigint, recorded_at timestamptz,
            duplicate boolean, stream text, type text, data jsonb, metadata jsonb
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
                SELECT t.id, t.stream, t.type, t.data, t.metadata, t.n
                FROM unnest(p_ids, p_streams, p_types, p_data, p_metadata)
                     WITH ORDINALITY AS t(id, stream, type, data, metadata, n)
            ), existing AS (
                SELECT e.* FROM events e WHERE e.event_id = ANY(p_ids)
            ), firsts AS (
                -- A key repeated inside the batch is written once, at its first place.
                SELECT DISTINCT ON (i.id) i.* FROM input i
                WHERE i.id NOT IN (SELECT x.event_id FROM existing x)
                ORDER BY i.id, i.n
            ), stream_heads AS (
                SELECT s.stream,
                       coalesce((SELECT max(e.version) FROM events e WHERE e.stream = s.stream), 0)
                         AS version
                FROM (SELECT DISTINCT f.stream FROM firsts f) s
            ), fresh AS (
                SELECT f.*,
                       head + row_number() OVER (ORDER BY f.n) AS new_position,
                       h.version + row_number() OVER (PARTITION BY f.stream ORDER BY f.n)
                         AS new_version
                FROM firsts f JOIN stream_heads h ON h.stream = f.stream
            ), inserted AS (
                INSERT INTO events (position, event_id, stream, version, type, data, metadata,
                                    recorded_at)
                SELECT new_position, id, stream, new_version, type, data::jsonb, metadata::jsonb,
                       recorded
                FROM fresh
                RETURNING events.event_id, events.position, events.version
            )
            SELECT i.n,
                   coalesce(ins.position, x.position),
                   coalesce(ins.version, x.version),
                   coalesce(x.recorded_at, recorded),
                   NOT (ins.event_id IS NOT NULL AND f.n = i.n),
                   x.stream, x.type, x.data, x.metadata
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
    op.execute("DROP FUNCTION append_events(uuid[], text[], text[], text[], text[])")
