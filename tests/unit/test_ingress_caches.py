"""The ingress's catalog caches: requests that miss together share one load, and a load
that overlapped a catalog write through this process is not kept."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

from tallyray.serve.api import Caches


class SlowCatalog:
    def __init__(self) -> None:
        self.loads = 0
        self.version = 0
        self._lock = threading.Lock()

    def env_catalog(self, env: str) -> Any:
        with self._lock:
            self.loads += 1
            seen = self.version
        time.sleep(0.05)  # a database round trip
        return (env, seen)


def caches(catalog: SlowCatalog) -> Caches:
    return Caches(SimpleNamespace(catalog=catalog, cache_seconds=60.0))  # type: ignore[arg-type]


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
        await asyncio.sleep(0.01)  # the load has read version 0
        catalog.version = 1  # a plan is written through this process ...
        cache.forget_env("test")  # ... which forgets its copy
        assert await early == ("test", 0)  # the request that started before sees the old
        assert await cache.env("test") == ("test", 1)  # the next one loads afresh

    asyncio.run(main())
    assert catalog.loads == 2
