"""Unpriced usage records (:mod:`tallyray.pricing.unpriced`): written by the shards, listed by
``GET /v1/unpriced-usage``.

A record holds absolute figures of an account's state (events and quantity so far in the
period), so writing it again — a shard replaying its log after a crash — writes the same."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tallyray.pricing.events import format_timestamp
from tallyray.storage import tables as t
from tallyray.storage.pages import Page, PageRequest, read_page

__all__ = ["UnpricedStore", "record_id"]


def record_id(env: str, row: Mapping[str, Any]) -> str:
    """The record's id: a hash of what it is per (environment, customer, plan version,
    meter, group, period), the same however often it is written."""
    key = orjson.dumps(
        [
            env,
            row["customer_id"],
            row["plan_key"],
            row["plan_version"],
            row["meter"],
            row["groups"],
            row["period_start"],
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return "unp_" + hashlib.sha256(key).hexdigest()[:32]


class UnpricedStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def save(self, env_rows: Sequence[tuple[str, Mapping[str, Any]]], now: int) -> None:
        """Write records (``(env, row)`` with :meth:`CustomerAccount.flag_row`'s fields),
        replacing what they say."""
        if not env_rows:
            return
        values = [
            {**row, "id": record_id(env, row), "env": env, "updated_at": now}
            for env, row in env_rows
        ]
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            stmt = insert(t.unpriced_usage)
            stmt = stmt.on_conflict_do_update(
                index_elements=["id"],
                set_={
                    "events": stmt.excluded.events,
                    "quantity": stmt.excluded.quantity,
                    "period_end": stmt.excluded.period_end,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
            conn.execute(stmt, values)

    def page(self, env: str, customer_id: str | None, page: PageRequest) -> Page[dict[str, Any]]:
        """Records of ``env`` (of one customer, if given), newest period first."""
        u = t.unpriced_usage
        query = select(u).where(u.c.env == env)
        if customer_id is not None:
            query = query.where(u.c.customer_id == customer_id)
        order = [(u.c.period_start, True), (u.c.id, False)]
        with self.engine.connect() as conn:
            found = read_page(conn, query, order, u.c.id, page, "unpriced usage record")
        return Page([_json(row) for row in found.items], found.has_more)


def _json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "customer_id": row.customer_id,
        "plan": row.plan_key,
        "plan_version": row.plan_version,
        "meter": row.meter,
        "groups": row.groups,
        "period": {
            "start": format_timestamp(row.period_start),
            "end": format_timestamp(row.period_end),
        },
        "events": row.events,
        "quantity": row.quantity,
        "updated_at": format_timestamp(row.updated_at),
    }
