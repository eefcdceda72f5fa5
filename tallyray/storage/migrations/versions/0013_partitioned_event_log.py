"""the event log partitioned by month on PostgreSQL; event ids in their own ledger

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 19:00:00

A partitioned table's unique constraints must hold the partition key, so on a table
partitioned by ``ts`` the old ``(env, customer_id, event_id)`` constraint cannot stay: it
would become "unique per id *and timestamp*", and a retried event with another timestamp, or
one whose partition retention dropped, would be counted again. Event ids move to
``event_ids``, one unpartitioned table keyed by ``(env, customer_id, event_id)`` that
retention never touches: a duplicate is recognised whatever its age, on both stores.

PostgreSQL: ``events`` becomes ``PARTITION BY RANGE (ts)``, with one partition per calendar
month (UTC) its existing rows fall in (the server adds this month's and the next, see
``tallyray/storage/partitions.py``) and a default partition for timestamps no monthly
partition covers. Its primary key is ``(seq, ts)``, whose ``seq`` prefix keeps the chunk
readers' and replay's range scans. The existing rows are copied (the ``seq`` sequence carries
on). SQLite keeps one table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tallyray.storage.partitions import month_partitions_sql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_ids",
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("env", "customer_id", "event_id"),
    )
    op.execute(
        "INSERT INTO event_ids (env, customer_id, event_id, received_at) "
        "SELECT env, customer_id, event_id, received_at FROM events"
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE events RENAME TO events_unpartitioned")
    op.execute("ALTER TABLE events_unpartitioned ALTER COLUMN seq DROP DEFAULT")
    op.execute("ALTER SEQUENCE events_seq_seq OWNED BY NONE")
    op.execute("ALTER TABLE events_unpartitioned DROP CONSTRAINT events_pkey")
    op.execute("ALTER TABLE events_unpartitioned DROP CONSTRAINT uq_events_idempotency")
    op.execute(
        """
        CREATE TABLE events (
            seq bigint NOT NULL DEFAULT nextval('events_seq_seq'),
            env varchar(8) NOT NULL,
            shard integer NOT NULL,
            customer_id varchar(255) NOT NULL,
            event_id varchar(255) NOT NULL,
            type varchar(255) NOT NULL,
            ts bigint NOT NULL,
            properties text NOT NULL,
            received_at bigint NOT NULL,
            CONSTRAINT events_pkey PRIMARY KEY (seq, ts)
        ) PARTITION BY RANGE (ts)
        """
    )
    op.execute("ALTER SEQUENCE events_seq_seq OWNED BY events.seq")
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    months = op.get_bind().execute(
        sa.text(
            "SELECT DISTINCT to_char(to_timestamp(ts / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM') "
            "FROM events_unpartitioned"
        )
    )
    for statement in month_partitions_sql(month for (month,) in months):
        op.execute(statement)
    op.execute(
        "INSERT INTO events (seq, env, shard, customer_id, event_id, type, ts, properties, "
        "received_at) SELECT seq, env, shard, customer_id, event_id, type, ts, properties, "
        "received_at FROM events_unpartitioned"
    )
    op.execute("DROP TABLE events_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events RENAME TO events_partitioned")
        op.execute("ALTER TABLE events_partitioned ALTER COLUMN seq DROP DEFAULT")
        op.execute("ALTER SEQUENCE events_seq_seq OWNED BY NONE")
        op.execute("ALTER TABLE events_partitioned DROP CONSTRAINT events_pkey")
        op.execute(
            """
            CREATE TABLE events (
                seq bigint NOT NULL DEFAULT nextval('events_seq_seq') PRIMARY KEY,
                env varchar(8) NOT NULL,
                shard integer NOT NULL,
                customer_id varchar(255) NOT NULL,
                event_id varchar(255) NOT NULL,
                type varchar(255) NOT NULL,
                ts bigint NOT NULL,
                properties text NOT NULL,
                received_at bigint NOT NULL,
                CONSTRAINT uq_events_idempotency UNIQUE (env, customer_id, event_id)
            )
            """
        )
        op.execute("ALTER SEQUENCE events_seq_seq OWNED BY events.seq")
        op.execute("INSERT INTO events SELECT * FROM events_partitioned")
        op.execute("DROP TABLE events_partitioned")
    op.drop_table("event_ids")
