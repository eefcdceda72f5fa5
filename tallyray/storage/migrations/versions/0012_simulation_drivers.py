"""simulation jobs record their driver and heartbeat, and their chunks

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 18:40:00

A simulation is driven by the API process that accepted it. The job row now says which
process (``driver``) and when it last said it still does (``heartbeat_at``): a job whose
driver stopped beating shows as ``interrupted`` and can be resumed
(``POST /v1/simulations/{id}/resume``). Its customers are stored in chunks
(``simulation_chunks``), each marked ``done`` with its results, so a resumed job simulates
only the rest, the same customers the job was started with.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("simulations") as batch_op:
        batch_op.add_column(sa.Column("driver", sa.String(120)))
        batch_op.add_column(sa.Column("heartbeat_at", sa.BigInteger()))
    op.create_table(
        "simulation_chunks",
        sa.Column("simulation_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("customers", _JSON, nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("simulation_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("simulation_chunks")
    with op.batch_alter_table("simulations") as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("driver")
