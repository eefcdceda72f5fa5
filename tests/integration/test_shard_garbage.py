"""A shard's hot paths leave no reference cycles behind (`tallyray/actors/shard.py`).

What a request leaves in a cycle is freed only by Python's cyclic collector; at 20,000 events
a second that was every request's events, and the full collections that freed them stalled a
shard's loop, quota checks included, for 19–67 ms every two seconds (docs/benchmarks.md,
"Garbage collection on a check's path"). So after a warm-up, requests through the group
commit — events, holds, a settle, a grant — must leave nothing for the collector: everything
is freed as soon as it is no longer used.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from suite_clock import CLOCK
from support import core_on, credit_grant, unique

from tallyray.actors.shard import IncomingEvent, ShardCore

pytestmark = pytest.mark.anyio

PROPERTIES = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}


def calls(customer: str, n: int) -> list[IncomingEvent]:
    return [(customer, unique("evt"), "llm.completion", CLOCK(), PROPERTIES) for _ in range(n)]


async def ingest(core: ShardCore) -> None:
    """Requests of both customers, several to a commit."""
    await asyncio.gather(*(core.ingest("test", calls(c, 10)) for c in ("p", "q") * 3))


async def hold_and_settle(core: ShardCore) -> None:
    hold_id = unique("res_0")
    answer, _ = await core.reserve("test", "p", hold_id, calls("p", 1), 60.0)
    assert answer.allowed
    await core.settle("test", hold_id, calls("p", 1))


async def grant(core: ShardCore) -> None:
    await core.add_grant("test", "q", credit_grant("q"))


@pytest.mark.parametrize("requests", [ingest, hold_and_settle, grant])
async def test_requests_through_the_group_commit_leave_nothing_to_the_cyclic_collector(
    store_url: str, requests: Callable[[ShardCore], Awaitable[None]]
) -> None:
    async with core_on(store_url) as core:
        for customer in ("p", "q"):
            await core.add_grant("test", customer, credit_grant(customer))
        for _ in range(2):  # warm-up: accounts loaded, caches filled, statements compiled
            await requests(core)
            await ingest(core)
        gc.collect()
        gc.garbage.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(5):
                await requests(core)
            gc.collect()
            left = Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert left == Counter()
