"""the pricing sandbox: simulation jobs and their per-customer results

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 18:00:00

A simulation (``POST /v1/simulations``) replays stored events under a draft plan. Its job row
carries the state and progress; each customer's comparison is one row of
``simulation_results``, written by the chunk task that computed it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "simulations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request", _JSON, nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("errors", _JSON, nullable=False),
        sa.Column("summary", _JSON, nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_simulations_env", "simulations", ["env", "created_at"])
    op.create_table(
        "simulation_results",
        sa.Column("simulation_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("actual", sa.Text(), nullable=False),
        sa.Column("simulated", sa.Text(), nullable=False),
        sa.Column("difference", sa.Text(), nullable=False),
        sa.Column("detail", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("simulation_id", "customer_id"),
    )


def downgrade() -> None:
    op.drop_table("simulation_results")
    op.drop_index("ix_simulations_env", table_name="simulations")
    op.drop_table("simulations")
