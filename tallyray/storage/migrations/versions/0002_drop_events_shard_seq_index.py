"""drop the events (shard, seq) index: replay walks the primary key instead

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 22:25:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_index("ix_events_shard_seq")


def downgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.create_index("ix_events_shard_seq", ["shard", "seq"], unique=False)
