"""safe retries: when a hold was settled or released, and the answers kept for
Idempotency-Key

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:00:00

A hold's ``finished_at`` is the time of the commit that settled or released it: a retried
settle finds which of its events that commit stored, and answers what the first one did. The
``idempotency_keys`` table keeps, for 24 hours, the answer to each request sent with an
``Idempotency-Key`` header.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("holds") as batch_op:
        batch_op.add_column(sa.Column("finished_at", sa.BigInteger))
    op.create_table(
        "idempotency_keys",
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("content_type", sa.String(100)),
        sa.Column("body", sa.LargeBinary),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("env", "key"),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("holds") as batch_op:
        batch_op.drop_column("finished_at")
