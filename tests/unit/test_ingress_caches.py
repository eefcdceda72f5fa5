"""The ingress's catalog caches: requests that miss together share one load, a load that
overlapped a catalog write through this process is not kept, and the customers cache is an
LRU of bounded size."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

from tallyray.serve.api import Caches
from tallyray.storage.catalog import CustomerRecord


class SlowCatalog:
    def __init__(self) -> None:
        self.loads = 0
        self.version = 0
        self._lock = threading.Lock()
        self.read = threading.Event()
        """Set once a load has read the catalog (its version)."""

    def env_catalog(self, env: str) -> Any:
        with self._lock:
            self.loads += 1
            seen = self.version
        self.read.set()
        time.sleep(0.05)  # a database round trip
        return (env, seen)


def caches(catalog: Any, size: int = 1000) -> Caches:
    services = SimpleNamespace(
        catalog=catalog, cache_seconds=60.0, customer_cache_seconds=60.0, customer_cache_size=size
    )
    return Caches(services)  # type: ignore[arg-type]


def test_concurrent_misses_share_one_load() -> None:
    catalog = SlowCatalog()
    cache = caches(catalog)

    async def main() -> None:
        envs = await asyncio.gather(*(cache.env("test") for _ in range(50)))
        assert set(envs) == {("test", 0)}

    asyncio.run(main())
    assert catalog.loads == 1  # one, not one per request


def test_a_load_that_overlapped_a_write_is_not_kept() -> None:
    catalog = SlowCatalog()
    cache = caches(catalog)

    async def main() -> None:
        early = asyncio.ensure_future(cache.env("test"))
        assert await asyncio.to_thread(catalog.read.wait, 10)  # the load has read version 0
        catalog.version = 1  # a plan is written through this process ...
        cache.forget_env("test")  # ... which forgets its copy
        assert await early == ("test", 0)  # the request that started before sees the old
        assert await cache.env("test") == ("test", 1)  # the next one loads afresh

    asyncio.run(main())
    assert catalog.loads == 2


class CustomerCatalog:
    """Customers by id; counts what each load asked for. ``hold`` keeps a load waiting
    (after it has read) until it is set."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.version = 0
        self.read = threading.Event()
        self.hold = threading.Event()
        self.hold.set()

    def customers(self, env: str, ids: list[str]) -> dict[str, CustomerRecord]:
        self.asked.append(sorted(ids))
        name = f"v{self.version}"
        self.read.set()
        assert self.hold.wait(10)
        return {i: CustomerRecord(env, i, "EUR", name=name) for i in ids}


def test_the_customer_cache_keeps_the_most_recently_used() -> None:
    catalog = CustomerCatalog()
    cache = caches(catalog, size=3)

    async def main() -> None:
        for customer in ("a", "b", "c"):  # one at a time: "a" is the least recent
            await cache.customers("test", {customer})
        await cache.customers("test", {"a"})  # a hit: "a" is now the most recent
        await cache.customers("test", {"d"})  # over the size: "b", the least recent, goes
        assert len(cache._customers) == 3
        catalog.asked.clear()
        for customer in ("c", "a", "d"):  # hits, in this order: "c" is now the least recent
            assert (await cache.customers("test", {customer}))[customer].id == customer
        assert catalog.asked == []
        await cache.customers("test", {"b"})
        assert catalog.asked == [["b"]]  # evicted before, so loaded again; "c" goes now
        catalog.asked.clear()
        await cache.customers("test", {"a", "b", "c", "d"})
        assert catalog.asked == [["c"]]

    asyncio.run(main())


def test_a_batch_larger_than_the_cache_is_answered_whole() -> None:
    catalog = CustomerCatalog()
    cache = caches(catalog, size=2)

    async def main() -> None:
        found = await cache.customers("test", {"a", "b", "c", "d", "e"})
        assert sorted(found) == ["a", "b", "c", "d", "e"]
        assert len(cache._customers) == 2

    asyncio.run(main())


def test_forgetting_a_customer_reloads_it_and_only_it() -> None:
    catalog = CustomerCatalog()
    cache = caches(catalog)

    async def main() -> None:
        await cache.customers("test", {"a", "b"})
        catalog.version = 1  # "a" is written through this process ...
        cache.forget_customer("test", "a")  # ... which forgets its copy
        catalog.asked.clear()
        found = await cache.customers("test", {"a", "b"})
        assert catalog.asked == [["a"]]
        assert (found["a"].name, found["b"].name) == ("v1", "v0")
        cache.forget_env("test")  # a catalog write keeps the customers
        catalog.asked.clear()
        await cache.customers("test", {"a", "b"})
        assert catalog.asked == []

    asyncio.run(main())


def test_a_customer_load_that_overlapped_a_write_is_not_kept() -> None:
    catalog = CustomerCatalog()
    cache = caches(catalog)

    async def main() -> None:
        catalog.hold.clear()
        early = asyncio.ensure_future(cache.customers("test", {"a"}))
        assert await asyncio.to_thread(catalog.read.wait, 10)  # the load has read v0
        catalog.version = 1
        cache.forget_customer("test", "a")
        catalog.hold.set()
        assert (await early)["a"].name == "v0"  # the request that started before sees the old
        assert (await cache.customers("test", {"a"}))["a"].name == "v1"  # the next loads afresh
        catalog.asked.clear()
        assert (await cache.customers("test", {"a"}))["a"].name == "v1"
        assert catalog.asked == []  # and keeps that one

    asyncio.run(main())
