"""Indexes for collaborative documents (SPEC section 7), each read by one query:

- `events_doc_updates`: a document's updates in order (`stream`, `data->>'doc_id'`, position),
  which opening a document reads after the projection's snapshot of it.
- `events_doc_opens`: the documents a user opened (`metadata->>'user_id'`, stream, doc id), which
  a connection's hub loads when the user's first connection attaches, as 0002 does for joins.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX events_doc_updates ON events (stream, (data->>'doc_id'), position)
        WHERE type = 'doc_update'
        """
    )
    op.execute(
        """
        CREATE INDEX events_doc_opens ON events ((metadata->>'user_id'), position)
        WHERE type = 'doc_open'
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX events_doc_opens")
    op.execute("DROP INDEX events_doc_updates")
