"""Connecting to the store: SQLite (embedded default) or PostgreSQL (psycopg 3).

``TALLYRAY_DATABASE_URL`` takes any SQLAlchemy URL; ``postgresql://`` and ``postgres://`` are
read as psycopg 3. The default is a SQLite file under ``./.tallyray/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError

from tallyray.errors import StoreUnavailable

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DatabaseUnavailable",
    "make_engine",
    "migrate",
    "normalize_url",
]

#: What the database driver raises when it cannot be reached (the API answers 503).
DatabaseUnavailable = OperationalError

DEFAULT_DATABASE_URL = "sqlite:///.tallyray/tallyray.db"
_MIGRATIONS = str(Path(__file__).with_name("migrations"))


def normalize_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; FULL makes every commit durable (fsync)
    # before Tallyray acknowledges it; the busy timeout lets shard processes take turns.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` (default: ``TALLYRAY_DATABASE_URL`` or the embedded SQLite)."""
    url = normalize_url(url or os.environ.get("TALLYRAY_DATABASE_URL") or DEFAULT_DATABASE_URL)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 8)
    return create_engine(url, connect_args={"connect_timeout": 5}, **kwargs)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to the newest Alembic revision (or to ``revision``)."""
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except OperationalError as error:
        raise StoreUnavailable(f"cannot reach the database to migrate it: {error.orig}") from None
