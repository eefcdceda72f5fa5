"""Under load a shard's commit of events waits a moment for more (`ShardCore._gather`);
anything but events commits at once. Driven on a stand-in: no Ray, no database."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tallyray.actors.shard import GATHER_EVENTS, ShardCore


def pending(events: int = 0, **kinds: Any) -> SimpleNamespace:
    fields = {"grants": [], "new_holds": [], "finished_holds": [], **kinds}
    return SimpleNamespace(
        events=[("test", "c", f"e{i}", "t", 0, "{}") for i in range(events)], **fields
    )


def shard(gather_seconds: float, *queued: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(
        _queue=list(queued), _wake=asyncio.Event(), gather_seconds=gather_seconds
    )


async def gathered(core: SimpleNamespace) -> None:
    await asyncio.wait_for(ShardCore._gather(core), 5)  # type: ignore[arg-type]


def test_a_small_commit_of_events_waits_until_enough_events_have_come() -> None:
    async def main() -> None:
        core = shard(60.0, pending(500))

        async def producer() -> None:
            for _ in range(GATHER_EVENTS // 500):
                await asyncio.sleep(0.01)
                core._queue.append(pending(500))
                core._wake.set()

        feeding = asyncio.ensure_future(producer())
        await gathered(core)  # would wait a minute if it did not count the events
        assert sum(len(p.events) for p in core._queue) >= GATHER_EVENTS
        await feeding

    asyncio.run(main())


def test_it_waits_no_longer_than_the_gather_time() -> None:
    async def main() -> None:
        core = shard(0.05, pending(10))
        await gathered(core)
        assert len(core._queue) == 1

    asyncio.run(main())


def test_anything_but_events_commits_at_once() -> None:
    async def main() -> None:
        for other in (
            pending(new_holds=[{"id": "res_1"}]),
            pending(grants=[{"id": "g"}]),
            pending(finished_holds=[("res_1", "released")]),
            pending(0),  # closing periods: an empty request that waits for the queue to land
        ):
            await gathered(shard(60.0, pending(10), other))

    asyncio.run(main())


@pytest.mark.parametrize(
    ("gather", "since_last_commit", "last_requests", "queued", "busy"),
    [
        (0.05, 0.01, 3, 1, True),  # commits back to back, several requests each: gather
        (0.05, 0.01, 1, 2, True),  # two requests waiting now
        (0.05, 0.01, 1, 1, False),  # a lone producer: never kept waiting
        (0.05, 5.00, 3, 1, False),  # idle for a while: commit at once
        (0.0, 0.01, 3, 3, False),  # gathering turned off
    ],
)
def test_when_a_shard_gathers(
    gather: float, since_last_commit: float, last_requests: int, queued: int, busy: bool
) -> None:
    core = shard(gather, *(pending(10) for _ in range(queued)))
    core._last_commit = time.perf_counter() - since_last_commit
    core._last_requests = last_requests
    assert ShardCore._busy(core) is busy  # type: ignore[arg-type]
