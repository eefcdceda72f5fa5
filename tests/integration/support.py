"""Helpers for the integration and end-to-end tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import ray
from suite_clock import CLOCK

from tallyray.actors.limits import Limits
from tallyray.actors.shard import ShardCore
from tallyray.clock import Clock, ShiftedClock
from tallyray.cluster import Settings
from tallyray.serve.app import Services
from tallyray.serve.shards import NAMESPACE, shard_name
from tallyray.storage.catalog import Catalog
from tallyray.storage.keys import KeyStore

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


def credit_grant(customer: str, amount: str = "50.00") -> dict[str, Any]:
    """A credit grant as a shard's ``add_grant`` takes it (EUR, test environment)."""
    return {
        "id": unique("grant"),
        "env": "test",
        "customer_id": customer,
        "amount": amount,
        "currency": "EUR",
        "priority": 1,
        "expires_at": None,
        "created_at": CLOCK(),
    }


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


_PID = lambda _actor: __import__("os").getpid()  # noqa: E731 — by value: runs in the actor


async def killed_and_back(shard: Any) -> None:
    """Kill the shard the way a crash would and wait until a new process answers (the kill is
    asynchronous: the old one may still answer a moment after it), calling nothing on the new
    one that starts its work (not ``ready``): what a restarted shard does with reads only."""
    old = await shard.__ray_call__.remote(_PID)
    ray.kill(shard, no_restart=False)
    for _ in range(600):
        with contextlib.suppress(ray.exceptions.RayActorError):
            if await shard.__ray_call__.remote(_PID) != old:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the shard did not come back")


@dataclass
class OwnShard:
    """A store and one shard of a test's own, served by the real app: for tests that write
    into the store behind the shard's back, restart it, or run it with other limits."""

    store: str
    url: str
    catalog: Catalog
    shards: list[Any]
    client: httpx.AsyncClient
    services: Services

    @property
    def shard(self) -> Any:
        """The first shard (the only one, unless asked for more)."""
        return self.shards[0]

    @property
    def engine(self) -> Any:
        return self.catalog.engine

    async def restart(self) -> None:
        """Kill the shard the way a crash would, and wait for Ray to bring it back: until a
        new process answers (the kill is asynchronous, and the old process may still answer
        a call, over Ray or its line, a moment after it was sent)."""
        old = await self.shard.__ray_call__.remote(_PID)
        ray.kill(self.shard, no_restart=False)
        for _ in range(300):
            try:
                await self.shard.ready.remote()
                if await self.shard.__ray_call__.remote(_PID) != old:
                    return
            except ray.exceptions.RayActorError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("the shard did not come back")

    async def status(self) -> dict[str, Any]:
        return await self.shard.status.remote()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def core_on(url: str) -> AsyncIterator[ShardCore]:
    """A shard's core on ``url`` (recovering from it), driven directly (no Ray), stopped
    afterwards."""
    core = ShardCore(0, 1, url, checkpoint_seconds=3600, clock=CLOCK)
    try:
        yield core
    finally:
        core.close()


@contextlib.asynccontextmanager
async def own_shard(
    store: str,
    tmp_path: Path,
    config_path: str | None,
    clock: Clock,
    grace_seconds: int | None = None,
    shards: int = 1,
    limits: Limits | None = None,
) -> AsyncIterator[OwnShard]:
    """A fresh database on ``store`` (sqlite or postgres) with the config loaded, ``shards``
    shard actors and a client with a test key. With ``grace_seconds``, late events are
    accepted that long (and invoice runs wait as long unless forced); ``limits`` go to the
    shards and the routes."""
    from tallyray.actors.shard import ShardActor
    from tallyray.cluster import prepare_store
    from tallyray.serve.app import build_app
    from tallyray.serve.intake import IntakeRules
    from tallyray.serve.shards import ShardRouter

    if store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path}/own.db"
    settings = Settings.load(database_url=url, shards=shards, config_path=config_path)
    catalog = prepare_store(settings)
    handles = [
        ray.remote(ShardActor)
        .options(name=unique("own-shard"), namespace=NAMESPACE, max_restarts=-1)
        .remote(i, shards, url, 0.5, grace_seconds, 0.0, clock.offset_us, limits)
        for i in range(shards)
    ]
    for handle in handles:
        await handle.ready.remote()
    router = ShardRouter(shards, handles.__getitem__)
    rules = IntakeRules() if grace_seconds is None else IntakeRules(grace_seconds=grace_seconds)
    services = Services(
        catalog=catalog,
        router=router,
        rules=rules,
        cache_seconds=0.2,
        clock=clock,
        limits=limits or Limits(),
    )
    _, key = KeyStore(catalog.engine).create("test", clock())
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(services)),
            base_url="http://tallyray.test",
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        ) as client:
            yield OwnShard(store, url, catalog, handles, client, services)
    finally:
        for handle in handles:
            ray.kill(handle, no_restart=True)
        catalog.engine.dispose()
        if store == "postgres" and POSTGRES_URL is not None:
            drop_postgres_database(POSTGRES_URL, url)


@dataclass
class BillingStage:
    """A fresh store and one shard of a test's own, for the invoicing tests: closing a
    period is for good, so tests that close one must not share an environment. The tests
    build their own :class:`~tallyray.invoicing.service.Billing` on it (seller, tax, clock
    are theirs) and serve it with :meth:`app`."""

    url: str
    catalog: Catalog
    router: Any
    """A :class:`~tallyray.serve.shards.ShardRouter` over the one shard."""
    grace_seconds: int
    clock: ShiftedClock
    """The app's and the shard's clock; a test's billing may run on another."""

    def app(self, billing: Any) -> Any:
        """The real app over this store and shard, with ``billing``."""
        from tallyray.serve.app import build_app
        from tallyray.serve.intake import IntakeRules

        return build_app(
            Services(
                catalog=self.catalog,
                router=self.router,
                rules=IntakeRules(grace_seconds=self.grace_seconds),
                cache_seconds=0.2,
                billing=billing,
                clock=self.clock,
            )
        )

    def client(self, app: Any, env: str = "test") -> httpx.AsyncClient:
        """A client of ``app`` with a new key of ``env``."""
        _, key = KeyStore(self.catalog.engine).create(env, self.clock())
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://tallyray.test",
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )


@contextlib.asynccontextmanager
async def billing_stage(
    store: str, tmp_path: Path, config_path: str, grace_seconds: int, clock: ShiftedClock
) -> AsyncIterator[BillingStage]:
    """A fresh database on ``store`` (sqlite or postgres) with ``config_path`` loaded and one
    shard that accepts events ``grace_seconds`` late, on ``clock``; all gone afterwards."""
    from tallyray.actors.shard import ShardActor
    from tallyray.cluster import prepare_store
    from tallyray.serve.shards import ShardRouter

    if store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path}/billing.db"
    catalog = prepare_store(Settings.load(database_url=url, shards=1, config_path=config_path))
    shard = (
        ray.remote(ShardActor)
        .options(name=unique("billing-shard"), namespace=NAMESPACE, max_restarts=-1)
        .remote(0, 1, url, 0.5, grace_seconds, 0.0, clock.offset_us)
    )
    try:
        await shard.ready.remote()
        yield BillingStage(url, catalog, ShardRouter(1, lambda i: shard), grace_seconds, clock)
    finally:
        ray.kill(shard, no_restart=True)
        catalog.engine.dispose()
        if store == "postgres" and POSTGRES_URL is not None:
            drop_postgres_database(POSTGRES_URL, url)
