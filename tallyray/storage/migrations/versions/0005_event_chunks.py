"""event_chunks replace the events (env, customer_id, ts) index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 05:15:00

A customer's events are found through one row per customer per group commit rather than an
index entry per event. Existing events get chunks by (customer, shard, received_at), which a
group commit shares (older servers stamped per request: their chunks may overlap, which the
readers allow for).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "event_chunks",
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("first_seq", seq, nullable=False),
        sa.Column("last_seq", seq, nullable=False),
        sa.Column("ts_min", sa.BigInteger, nullable=False),
        sa.Column("ts_max", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
    )
    op.execute(
        "INSERT INTO event_chunks "
        "(env, customer_id, shard, first_seq, last_seq, ts_min, ts_max, events) "
        "SELECT env, customer_id, shard, min(seq), max(seq), min(ts), max(ts), count(*) "
        "FROM events GROUP BY env, customer_id, shard, received_at"
    )
    op.create_index("ix_event_chunks_customer", "event_chunks", ["env", "customer_id", "ts_max"])
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_index("ix_events_customer_ts")


def downgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.create_index("ix_events_customer_ts", ["env", "customer_id", "ts"])
    op.drop_index("ix_event_chunks_customer", table_name="event_chunks")
    op.drop_table("event_chunks")
