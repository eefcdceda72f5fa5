"""How the ingress's router learns a new shard count after a reshard (fake shards, no Ray):
a shard that does not own the customer, or a shard that is gone, is a 503 after which the
router routes by the stored count."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tallyray.errors import NotOwner, StoreUnavailable
from tallyray.serve.shards import ShardRouter


class Owner:
    """A shard handle whose ``balance`` answers, or refuses a customer it does not own."""

    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count

    def __getattr__(self, method: str) -> Any:
        shard = self

        class Method:
            @staticmethod
            async def remote(env: str, customer: str) -> Any:
                router = ShardRouter(shard.count)
                if router.index(env, customer) != shard.index:
                    raise NotOwner(f"not shard {shard.index}'s")
                return {"shard": shard.index}

        return Method


def test_a_router_with_an_old_count_learns_the_new_one_from_the_first_refusal() -> None:
    stored = {"count": 4, "epoch": 1}
    shards = {i: Owner(i, 4) for i in range(4)}

    def lookup(index: int) -> Any:
        if index not in shards:
            raise ValueError(index)
        return shards[index]

    router = ShardRouter(
        2, lookup=lookup, lines=False, layout=lambda: (stored["count"], stored["epoch"])
    )
    customer = next(
        f"c{i}" for i in range(100) if ShardRouter(4).index("test", f"c{i}") >= 2
    )  # one that moved to a shard the old count does not have

    async def main() -> None:
        with pytest.raises(StoreUnavailable):  # NotOwner: answered 503, retried by the client
            await router.call(router.index("test", customer), "balance", "test", customer)
        assert (router.count, router.epoch) == (4, 1)
        index = router.index("test", customer)
        assert await router.call(index, "balance", "test", customer) == {"shard": index}
        # Shrunk to 3: the gone shard 3 is a 503 too, and the count is read again.
        stored.update(count=3, epoch=2)
        del shards[3]
        with pytest.raises(StoreUnavailable, match="not running"):
            router._handles.clear()
            await router.call(3, "balance", "test", customer)
        assert router.count == 3

    asyncio.run(main())
