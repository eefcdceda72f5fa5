"""A checkpoint takes its accounts' states in slices, answering quota checks and holds in
between (``ShardCore.checkpoint``), and what it stores is what the shard had: a restart from
it gives the same balances."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from suite_clock import CLOCK
from support import core_on, credit_grant, unique

from tallyray.actors import shard as shard_module
from tallyray.actors.account import CustomerAccount
from tallyray.actors.shard import IncomingEvent

pytestmark = pytest.mark.anyio

CUSTOMERS = ("p", "q", "r")
PROPERTIES = {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}


def calls(customer: str, n: int) -> list[IncomingEvent]:
    return [(customer, unique("evt"), "llm.completion", CLOCK(), PROPERTIES) for _ in range(n)]


async def test_checks_and_holds_go_on_between_a_checkpoints_states(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_module, "APPLY_SLICE_SECONDS", 0.0)  # a slice per account
    seen: list[str] = []
    snapshot = CustomerAccount.snapshot

    def noted(account: CustomerAccount) -> dict[str, Any]:
        seen.append("state")
        return snapshot(account)

    monkeypatch.setattr(CustomerAccount, "snapshot", noted)
    async with core_on(store_url) as core:
        for customer in CUSTOMERS:
            await core.add_grant("test", customer, credit_grant(customer, "20.00"))
            await core.ingest("test", calls(customer, 3))
        for customer in CUSTOMERS:  # applied, and priced
            core.balance("test", customer)
        taking = asyncio.create_task(core.checkpoint())
        holds: list[asyncio.Task[Any]] = []
        while not taking.done():
            for customer in CUSTOMERS:
                assert core.check("test", customer, calls(customer, 1)).allowed
                seen.append("check")
            if "state" in seen and len(holds) < 2:  # placed now, written after the checkpoint
                customer = CUSTOMERS[len(holds)]
                hold = core.reserve("test", customer, unique("hold"), calls(customer, 1), 60)
                holds.append(asyncio.create_task(hold))
            await asyncio.sleep(0)
        assert await taking == len(CUSTOMERS)
        assert [answer.allowed for answer, _ in await asyncio.gather(*holds)] == [True, True]
        first, last = seen.index("state"), len(seen) - seen[::-1].index("state") - 1
        assert "check" in seen[first:last]  # answered while the states were being taken
        live = {c: core.balance("test", c) for c in CUSTOMERS}
    async with core_on(store_url) as restarted:
        assert {c: restarted.balance("test", c) for c in CUSTOMERS} == live
