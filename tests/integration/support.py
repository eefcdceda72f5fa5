"""Helpers for the integration and end-to-end tests (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import ray

from tallyray.clock import Clock
from tallyray.cluster import Settings
from tallyray.serve.app import Services
from tallyray.serve.shards import NAMESPACE, shard_name
from tallyray.storage.catalog import Catalog

POSTGRES_URL = os.environ.get("TALLYRAY_TEST_POSTGRES_URL")


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_postgres_database(base_url: str) -> str:
    """A fresh database on the server of ``base_url``; returns its URL."""
    name = f"tallyray_it_{secrets.token_hex(4)}"
    with psycopg.connect(_psycopg_url(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = base_url.rpartition("/")
    return f"{head}/{name}"


def drop_postgres_database(base_url: str, url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(_psycopg_url(base_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    store: str
    settings: Settings
    catalog: Catalog
    services: Services
    app: Any
    test_key: str
    live_key: str

    @property
    def clock(self) -> Clock:
        """The server's clock: what it takes as now."""
        return self.settings.clock

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key or self.test_key}"}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://tallyray.test",
            headers=headers,
            timeout=120,
        )


def kill_shards(count: int) -> None:
    for i in range(count):
        try:
            handle = ray.get_actor(shard_name(i), namespace=NAMESPACE)
        except ValueError:
            continue
        ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 30
    for i in range(count):
        while time.monotonic() < deadline:
            try:
                ray.get_actor(shard_name(i), namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def make_customer(
    client: httpx.AsyncClient,
    *,
    plan: str | None = "pro",
    credits: str | None = None,
    currency: str = "EUR",
    **fields: Any,
) -> str:
    customer_id = unique("cust")
    r = await client.post("/v1/customers", json={"id": customer_id, "currency": currency, **fields})
    assert r.status_code == 201, r.text
    if plan is not None:
        r = await client.post("/v1/subscriptions", json={"customer_id": customer_id, "plan": plan})
        assert r.status_code == 201, r.text
    if credits is not None:
        r = await client.post(f"/v1/customers/{customer_id}/credits", json={"amount": credits})
        assert r.status_code == 201, r.text
    return customer_id
