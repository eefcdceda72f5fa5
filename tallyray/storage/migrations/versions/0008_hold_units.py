"""unit limits: a hold keeps the units it holds

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 18:00:00

A reservation holds units of the plan's unit limits as well as money, so concurrent
reservations never pass a unit limit; after a restart the shard restores them from here.
Holds stored before have none (NULL).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch_op:
        batch_op.add_column(sa.Column("units", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("holds") as batch_op:
        batch_op.drop_column("units")
