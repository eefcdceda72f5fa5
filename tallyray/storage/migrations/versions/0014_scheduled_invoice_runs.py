"""invoice runs record the schedule slot that started them, and their driver's heartbeat

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 19:00:00

The server starts an invoice run by itself once a day at a set time
(:mod:`tallyray.invoicing.scheduler`). The run row carries the slot (``scheduled_for``, the
instant it was due); a unique index on (env, scheduled_for) makes the row its own claim: of
several replicas, or a restarted one, exactly one INSERT for a slot succeeds. Runs started
by hand leave it NULL (NULLs never collide).

Like a simulation (0012), a run now records its driver and heartbeat: a run whose driving
process stopped shows ``interrupted``, and ``/resume`` takes it over with one conditional
UPDATE. Runs stored before have neither, so one left ``running`` shows ``interrupted``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice_runs") as batch_op:
        batch_op.add_column(sa.Column("scheduled_for", sa.BigInteger()))
        batch_op.add_column(sa.Column("driver", sa.String(120)))
        batch_op.add_column(sa.Column("heartbeat_at", sa.BigInteger()))
    op.create_index(
        "ux_invoice_runs_scheduled", "invoice_runs", ["env", "scheduled_for"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_invoice_runs_scheduled", table_name="invoice_runs")
    with op.batch_alter_table("invoice_runs") as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("driver")
        batch_op.drop_column("scheduled_for")
