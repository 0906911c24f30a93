"""Drop the `memberships` projection: nothing read its table, and `rooms` keeps the same rows
in `room_members` (one read model per thing something reads).

Projections create their tables themselves (productflo.projections.framework.ensure_tables);
this removes the retired one's tables and checkpoint from databases that had it. Downgrading
leaves them gone: the projection no longer exists to fill them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("memberships", "memberships_rebuild", "memberships_retired"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DELETE FROM projection_checkpoints WHERE name = 'memberships'")


def downgrade() -> None:
    pass
