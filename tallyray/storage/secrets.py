"""Secrets the server makes for itself and every replica must share (``server_secrets``)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from tallyray.storage import tables as t

__all__ = ["shared_secret"]


def shared_secret(engine: Engine, name: str, make: Callable[[], str], now: int) -> str:
    """The secret stored under ``name``, made with ``make()`` and stored on first use. Two
    processes racing to make it both end up with the one that was inserted first."""
    table = t.server_secrets
    query = select(table.c.value).where(table.c.name == name)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    if value is not None:
        return str(value)
    fresh = make()
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(name=name, value=fresh, created_at=now))
    except IntegrityError:  # another process stored one first: use that
        with engine.connect() as conn:
            return str(conn.execute(query).scalar_one())
    return fresh
