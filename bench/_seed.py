"""Shared setup of the invoice-run benchmarks (bench_invoice_run.py, bench_scheduled_run.py):
a fresh store, customers bulk-inserted on "pro" since 1 October, and a local Ray with the
shard actors. None of it is timed.

Everything talks to 127.0.0.1 only. Not a module of the tallyray package: run the benchmark
scripts from the repository root.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import _server
from sqlalchemy import Engine, text

from tallyray.cluster import Settings, start_ray, start_shards, stop
from tallyray.cluster.wiring import share_secrets
from tallyray.credentials import remove_secrets_file
from tallyray.pricing import parse_timestamp
from tallyray.storage.catalog import new_id

CONFIG = "examples/llm-api/tallyray.json"
PERIOD_START = parse_timestamp("2026-10-01T00:00:00Z")
PERIOD_END = parse_timestamp("2026-11-01T00:00:00Z")
SELLER = {
    "name": "Acme AI GmbH",
    "email": "billing@acme.example",
    "vat_id": "DE136695976",
    "country": "DE",
    "address": {"line1": "Hauptstr. 1", "postal_code": "10115", "city": "Berlin", "country": "DE"},
}
TAX = {"engine": "eu_vat", "seller_country": "DE", "seller_vat_id": "DE136695976"}
INSERT_BATCH = 2000
"""Customers per bulk insert (executemany)."""


def log(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def fresh_store(kind: str, name: str) -> Iterator[str]:
    """A fresh, empty database URL (PostgreSQL on 127.0.0.1:5432, a database ``name_…`` of
    its own; or a SQLite file in a temporary directory); dropped (or deleted) at the end."""
    if kind == "postgres":
        database, url = _server.create_database(name)
        try:
            yield url
        finally:
            _server.drop_database(database)
    else:
        folder = tempfile.mkdtemp(prefix=f"{name.replace('_', '-')}-")
        log(f"SQLite file in {folder}")
        try:
            yield f"sqlite:///{folder}/tallyray.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def customer_rows(env: str, ids: list[str], now: int, billing_mode: str) -> list[dict[str, Any]]:
    """``customers`` rows: EUR, Germany, German invoices, paid through the manual provider."""
    return [
        {
            "env": env,
            "id": c,
            "name": f"Customer {c}",
            "email": f"{c}@example.com",
            "currency": "EUR",
            "country": "DE",
            "vat_id": None,
            "address": {"line1": "Teststr. 1", "city": "Berlin", "country": "DE"},
            "billing_mode": billing_mode,
            "overdraft": "0",
            "spend_limit": None,
            "created_at": now,
            "billing": {"locale": "de_DE", "payment_provider": "manual"},
        }
        for c in ids
    ]


def subscription_rows(env: str, ids: list[str], now: int) -> list[dict[str, Any]]:
    """``subscriptions`` rows: each customer on "pro" (version 1) since 1 October, calendar
    periods."""
    return [
        {
            "id": new_id("sub"),
            "env": env,
            "customer_id": c,
            "plan_key": "pro",
            "plan_version": 1,
            "start": PERIOD_START,
            "end": None,
            "created_at": now,
            "anchor": "calendar",
            "discount": None,
        }
        for c in ids
    ]


def analyze(engine: Engine) -> None:
    """What PostgreSQL's autovacuum does within a minute or so of a bulk load; without it
    the planner still thinks the tables are nearly empty."""
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


@contextlib.contextmanager
def shards_running(settings: Settings) -> Iterator[Settings]:
    """A local Ray (2 CPUs) and the shard actors on ``settings``' store; the settings the
    shards run with (their secrets shared through a file: the shards read the database URL
    as a secret). Ray stops and the secrets file goes at the end."""
    start_ray(Settings(), num_cpus=2)
    shared: Settings | None = None
    try:
        shared = share_secrets(settings)
        start_shards(shared)
        yield shared
    finally:
        stop(Settings())
        if shared is not None and shared.secrets_file:
            remove_secrets_file(shared.secrets_file)
