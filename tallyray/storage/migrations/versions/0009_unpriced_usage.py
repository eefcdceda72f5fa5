"""unpriced usage: what no charge of a plan prices, per customer, plan, meter, group, period

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 18:00:00

Plans that flag unpriced usage (``"unpriced": "flag"``, the default) have it counted here by
the shards, for ``GET /v1/unpriced-usage``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "unpriced_usage",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("plan_key", sa.String(64), nullable=False),
        sa.Column("plan_version", sa.Integer),
        sa.Column("meter", sa.String(64), nullable=False),
        sa.Column("groups", JSON, nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=False),
        sa.Column("period_end", sa.BigInteger, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("quantity", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_unpriced_usage_env", "unpriced_usage", ["env", "period_start", "id"])
    op.create_index(
        "ix_unpriced_usage_customer", "unpriced_usage", ["env", "customer_id", "period_start"]
    )


def downgrade() -> None:
    op.drop_index("ix_unpriced_usage_customer", table_name="unpriced_usage")
    op.drop_index("ix_unpriced_usage_env", table_name="unpriced_usage")
    op.drop_table("unpriced_usage")
