"""saved payment methods, their setup sessions, auto-recharge settings and crossings

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 20:40:00

``payment_methods``: the provider's reference of a card a customer saved on the provider's
own page, with brand, last 4 and expiry, nothing more. ``auto_recharge_settings``: per
customer. ``auto_recharges``: one row per crossing of the threshold, written by the shard in
the transaction of the crossing; its unique (env, customer, crossing) is what makes a
crossing charge at most once (docs/payments.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("brand", sa.String(32)),
        sa.Column("last4", sa.String(4)),
        sa.Column("exp_month", sa.Integer()),
        sa.Column("exp_year", sa.Integer()),
        sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("removed_at", sa.BigInteger()),
        sa.UniqueConstraint("env", "provider", "reference", name="uq_payment_methods_reference"),
    )
    op.create_index("ix_payment_methods_customer", "payment_methods", ["env", "customer_id"])
    op.create_table(
        "payment_setups",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_reference", sa.String(255)),
        sa.Column("url", sa.Text()),
        sa.Column("replaces", sa.String(40)),
        sa.Column("method_id", sa.String(40)),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.BigInteger()),
    )
    op.create_table(
        "auto_recharge_settings",
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.String(50), nullable=False),
        sa.Column("amount", sa.String(50), nullable=False),
        sa.Column("monthly_cap", sa.String(50), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("disabled_reason", sa.String(500)),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("env", "customer_id"),
    )
    op.create_table(
        "auto_recharges",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("crossing", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("amount", sa.String(50)),
        sa.Column("currency", sa.String(3)),
        sa.Column("purchase_id", sa.String(40)),
        sa.Column("next_attempt_at", sa.BigInteger()),
        sa.Column("claimed_until", sa.BigInteger()),
        sa.Column("failure", _JSON),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("env", "customer_id", "crossing", name="uq_auto_recharges_crossing"),
    )
    op.create_index("ix_auto_recharges_due", "auto_recharges", ["status", "next_attempt_at"])
    op.create_index("ix_auto_recharges_customer", "auto_recharges", ["env", "customer_id", "month"])


def downgrade() -> None:
    op.drop_index("ix_auto_recharges_customer", table_name="auto_recharges")
    op.drop_index("ix_auto_recharges_due", table_name="auto_recharges")
    op.drop_table("auto_recharges")
    op.drop_table("auto_recharge_settings")
    op.drop_table("payment_setups")
    op.drop_index("ix_payment_methods_customer", table_name="payment_methods")
    op.drop_table("payment_methods")
