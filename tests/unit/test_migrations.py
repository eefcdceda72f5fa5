"""The Alembic migrations build exactly the schema ``tallyray.storage.tables`` declares."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tallyray.storage import tables as t
from tallyray.storage.db import make_engine, migrate


def test_the_migrations_match_the_table_definitions(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/schema.db")
    migrate(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        differences = [
            d for d in compare_metadata(context, t.metadata) if "alembic_version" not in str(d)
        ]
    engine.dispose()
    assert differences == []


def test_0006_keeps_every_limit_in_the_operators_hands_and_scopes_every_key(
    tmp_path: Path,
) -> None:
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path}/upgrade.db")
    migrate(engine, "0005")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO customers (env, id, currency, billing_mode, overdraft, spend_limit, "
                "created_at) VALUES ('live', 'acme', 'EUR', 'postpaid', '0', '250.00', 1), "
                "('live', 'beta', 'EUR', 'prepaid', '0', NULL, 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_keys (id, env, hash, prefix, name, created_at) VALUES "
                "('key_a', 'admin', 'h1', 'trk_admin_x', 'seeded', 1), "
                "('key_l', 'live', 'h2', 'trk_live_x', 'gateway', 1)"
            )
        )
    migrate(engine)
    with engine.connect() as conn:
        limits = conn.execute(
            text("SELECT id, credit_limit, spend_cap FROM customers ORDER BY id")
        ).all()
        keys = conn.execute(text("SELECT id, scopes, seeded FROM api_keys ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in limits] == [("acme", "250.00", None), ("beta", None, None)]
    assert [tuple(r) for r in keys] == [("key_a", "admin", 1), ("key_l", "ingest,read,manage", 0)]
