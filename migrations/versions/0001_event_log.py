"""The event log: one append-only table, a head row that orders commits, the log's identity.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # position is assigned by the appender from log_head, never by a sequence: see
    # productflo/events/store.py for why commit order must equal position order.
    op.execute(
        """
        CREATE TABLE events (
            position    bigint      PRIMARY KEY,
            event_id    uuid        NOT NULL UNIQUE,
            stream      text        NOT NULL,
            version     bigint      NOT NULL,
            type        text        NOT NULL,
            data        jsonb       NOT NULL,
            metadata    jsonb       NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT events_stream_version UNIQUE (stream, version),
            CONSTRAINT events_position_positive CHECK (position > 0),
            CONSTRAINT events_version_positive CHECK (version > 0)
        )
        """
    )
    # Every index is paid for on every append: only those the readers need.
    op.execute("CREATE INDEX events_stream_position ON events (stream, position)")

    op.execute(
        """
        CREATE TABLE log_head (
            id       boolean PRIMARY KEY DEFAULT true CHECK (id),
            position bigint  NOT NULL DEFAULT 0,
            log_id   uuid    NOT NULL DEFAULT gen_random_uuid()
        )
        """
    )
    op.execute("INSERT INTO log_head DEFAULT VALUES")

    # Append-only, enforced by the database for every role, not by convention.
    op.execute(
        """
        CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the event log is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION events_are_append_only()
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only()
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE log_head")
    op.execute("DROP TABLE events")
    op.execute("DROP FUNCTION events_are_append_only()")
