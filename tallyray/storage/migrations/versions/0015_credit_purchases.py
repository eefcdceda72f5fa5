"""credit purchases: prepaid credit bought through a payment provider (top-ups, recharges)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 21:00:00

One row per purchase. Its status moves ``pending`` → ``paid`` exactly once, in the shard's
transaction that books the credit grant (``storage.purchases.mark_paid``), or to ``failed`` /
``canceled`` without booking anything. ``provider_reference`` is unique: one provider object
(a Checkout Session, an Adyen session, a PaymentIntent) pays one purchase. See docs/payments.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "credit_purchases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("amount", sa.String(50), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_reference", sa.String(255), unique=True),
        sa.Column("payment_reference", sa.String(255)),
        sa.Column("checkout", JSON),
        sa.Column("failure", JSON),
        sa.Column("grant_id", sa.String(40)),
        sa.Column("document_id", sa.String(40)),
        sa.Column("document", JSON),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", sa.BigInteger()),
    )
    op.create_index(
        "ix_credit_purchases_customer", "credit_purchases", ["env", "customer_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_credit_purchases_customer", table_name="credit_purchases")
    op.drop_table("credit_purchases")
