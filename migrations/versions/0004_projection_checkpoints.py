"""Checkpoints of the projections: how far into the log each read model has applied.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The projections' own tables are created by the projections (productflo/projections), so
    # that a rebuild can create fresh copies of them from the same definition.
    op.execute(
        """
        CREATE TABLE projection_checkpoints (
            name       text        PRIMARY KEY,
            position   bigint      NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE projection_checkpoints")
