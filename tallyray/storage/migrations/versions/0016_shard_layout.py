"""the shard count lives in the database

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 21:00:00

One row (``id`` = 1) says how many shards own the data and how often that changed
(``epoch``, raised by every ``tallyray reshard``). The first start writes it (from the
checkpoints of a database that predates it, else from ``TALLYRAY_SHARDS`` or the CPU count);
from then on the server reads it, so a database moved to a box with another core count
starts as it was (:mod:`tallyray.storage.layout`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shard_layout",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shard_layout")
