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
