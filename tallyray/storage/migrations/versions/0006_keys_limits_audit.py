"""scoped, expiring API keys; the operator's credit limit beside the customer's spend cap;
the audit log; invoice run statuses that fit

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 03:00:00

Keys get scopes (every existing key keeps all three; admin keys get ``admin``), an expiry,
a coarse last use, and a flag for the key seeded from ``TALLYRAY_ADMIN_KEY``.

A customer's one ``spend_limit`` becomes two: ``credit_limit`` (the operator's) and
``spend_cap`` (the customer's own, from the portal). Existing limits become credit limits:
the portal could write the old column too, but keeping every existing limit in the
operator's hands is the safe reading, and a customer can set a cap again.

An invoice run's status was 16 characters wide, too narrow for ``completed_with_errors``:
on PostgreSQL such a run could not be stored and ended ``failed``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice_runs") as batch_op:
        batch_op.alter_column(
            "status", type_=sa.String(32), existing_type=sa.String(16), existing_nullable=False
        )

    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(
            sa.Column("scopes", sa.String(64), nullable=False, server_default="ingest,read,manage")
        )
        batch_op.add_column(sa.Column("expires_at", sa.BigInteger))
        batch_op.add_column(sa.Column("last_used_at", sa.BigInteger))
        batch_op.add_column(
            sa.Column("seeded", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.execute("UPDATE api_keys SET scopes = 'admin' WHERE env = 'admin'")
    op.execute(
        sa.text("UPDATE api_keys SET seeded = :yes WHERE name = 'seeded'").bindparams(yes=True)
    )

    with op.batch_alter_table("customers") as batch_op:
        batch_op.add_column(sa.Column("credit_limit", sa.String(50)))
        batch_op.add_column(sa.Column("spend_cap", sa.String(50)))
    op.execute("UPDATE customers SET credit_limit = spend_limit")
    with op.batch_alter_table("customers") as batch_op:
        batch_op.drop_column("spend_limit")

    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("env", sa.String(8), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(255), nullable=False),
        sa.Column("actor_name", sa.String(200)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("summary", json, nullable=False),
    )
    op.create_index(
        "ix_audit_events_object",
        "audit_events",
        ["env", "object_type", "object_id", "created_at"],
    )
    op.create_index("ix_audit_events_env", "audit_events", ["env", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("invoice_runs") as batch_op:
        batch_op.alter_column(
            "status", type_=sa.String(16), existing_type=sa.String(32), existing_nullable=False
        )
    op.drop_index("ix_audit_events_env", table_name="audit_events")
    op.drop_index("ix_audit_events_object", table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("customers") as batch_op:
        batch_op.add_column(sa.Column("spend_limit", sa.String(50)))
    op.execute("UPDATE customers SET spend_limit = credit_limit")
    with op.batch_alter_table("customers") as batch_op:
        batch_op.drop_column("spend_cap")
        batch_op.drop_column("credit_limit")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("seeded")
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scopes")
