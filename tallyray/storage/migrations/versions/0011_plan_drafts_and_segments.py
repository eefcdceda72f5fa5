"""plan drafts, and the segments of a period a plan change cut

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 18:00:00

A plan version has a ``status``: ``published`` (every version so far) or ``draft`` (stored,
simulated, not subscribable; one per key). A closed period's record keeps its ``segments``
when a plan change cut it: each part's usage, priced under its own plan.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="published")
        )
    with op.batch_alter_table("billing_periods") as batch_op:
        batch_op.add_column(sa.Column("segments", _JSON))


def downgrade() -> None:
    with op.batch_alter_table("billing_periods") as batch_op:
        batch_op.drop_column("segments")
    with op.batch_alter_table("plans") as batch_op:
        batch_op.drop_column("status")
