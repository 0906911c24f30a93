"""Indexes for the audit (GET /admin/events, `productflo audit`): each filter by index.

Every audit query reads in position order (`ORDER BY position LIMIT n`, cursor `position > after`),
so each index ends in `position`: the first page of a filter is the first `n` entries of one index
range, however many events the log holds. Rooms need nothing new: `stream = 'room:<id>'` is the
existing `events_stream_position`. Each index is paid for on every append, so there is one per
filter and no more:

- `events_audit_user`: `metadata->>'user_id'`, the user who sent the message.
- `events_audit_code`: the audit `code` (productflo/audit.py): the message code, or the
  `error_code` of a rejected message. One index on the expression instead of one on `type` and a
  partial one on rejected error codes. The expression must stay identical to `CODE_SQL` in
  productflo/audit.py, or the planner cannot match it.
- `events_recorded_at`: `recorded_at` grows with position (append_events(), migration 0003, takes
  it under the head lock), so a time range is a position range: one probe at each end of this
  index finds it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX events_audit_user ON events ((metadata->>'user_id'), position)")
    op.execute(
        """
        CREATE INDEX events_audit_code ON events (
            (CASE WHEN type = 'rejected' THEN data->>'error_code' ELSE type END), position
        )
        """
    )
    op.execute("CREATE INDEX events_recorded_at ON events (recorded_at, position)")


def downgrade() -> None:
    op.execute("DROP INDEX events_recorded_at")
    op.execute("DROP INDEX events_audit_code")
    op.execute("DROP INDEX events_audit_user")
