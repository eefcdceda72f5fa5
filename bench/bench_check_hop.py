"""A quota check's hop without Ray or HTTP: CPU per check at each end of the shard line.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_check_hop.py [--checks 3000] [--rate 0]

This process is the replica's side: :meth:`ShardRouter.check`, its batching and its line.
A child process is the shard's side: a :class:`~tallyray.actors.shard_line.ShardLineServer`
whose ``check_many`` rates each check against one of 1,000 live
:class:`~tallyray.actors.account.CustomerAccount` s on the example's ``pro`` plan (with a
credit grant), as ``ShardCore.check_many`` does — so the shard's figure includes the rating.

``--rate 0`` (the default) sends one check at a time and waits for its answer: one check per
call, the hop's full per-call cost. ``--rate N`` sends N checks/s open loop, so checks that
arrive while a call is out share the next one. CPU is each process's CPU time
(``time.process_time``) over the run, divided by the checks: it suffers less than wall time
from other load on a shared machine (alternate runs of two trees to compare them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import time
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "llm-api" / "tallyray.json"
NOW = 1_765_000_000_000_000
CUSTOMERS = 1000


def live_accounts() -> dict[tuple[str, str], Any]:
    """``CUSTOMERS`` accounts (env ``test``, ids ``c0``…) on the example's ``pro`` plan, each
    with a credit grant of a million EUR."""
    from tallyray.actors.account import CustomerAccount, Profile
    from tallyray.pricing import parse_config
    from tallyray.pricing.credits import CreditGrant

    config = parse_config(json.loads(CONFIG.read_text()))
    million = Decimal(1_000_000)
    accounts = {}
    for i in range(CUSTOMERS):
        account = CustomerAccount(Profile(f"c{i}", "EUR", config.plan("pro")), config.meters)
        account.add_grant(CreditGrant("g", million, "EUR", million, created_at=NOW - 10**9))
        accounts[("test", f"c{i}")] = account
    return accounts


def would_be_properties(rng: random.Random) -> dict[str, Any]:
    """A would-be LLM call's properties, as the benchmarks' gateways ask about."""
    model = rng.choice(["gpt-4o", "gpt-4o-mini"])
    return {"model": model, "input_tokens": rng.randint(50, 4000), "output_tokens": 300}


def shard(conn: Connection) -> None:
    from tallyray.actors.shard_line import ShardLineServer
    from tallyray.pricing.events import Event

    accounts = live_accounts()

    def check_many(checks: list[tuple[str, str, list[Any]]]) -> list[Any]:
        return [
            accounts[(env, customer)].check([Event(e[1], e[0], e[2], e[3], e[4]) for e in e_], NOW)
            for env, customer, e_ in checks
        ]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = ShardLineServer("node", {"check_many": check_many})
        conn.send(await server.endpoint())
        await loop.run_in_executor(None, conn.recv)  # start
        started = time.process_time()
        await loop.run_in_executor(None, conn.recv)  # stop
        conn.send(time.process_time() - started)

    asyncio.run(run())


class Handle:
    """Stands in for the shard's Ray handle: it only says where the line is."""

    def __init__(self, endpoint: Any) -> None:
        self.line_endpoint = self
        self.endpoint = endpoint

    async def remote(self) -> Any:
        return self.endpoint


async def replica(conn: Connection, endpoint: Any, checks: int, rate: float) -> None:
    from tallyray.serve.shards import ShardRouter

    router = ShardRouter(1, lookup=lambda i: Handle(endpoint), node=lambda: "node")
    rng = random.Random(1)

    def would_be(customer: str) -> list[Any]:
        return [(customer, "quote_0", "llm.completion", NOW, would_be_properties(rng))]

    await router.check(0, "test", "c1", would_be("c1"))  # opens the line
    latencies: list[float] = []

    async def one(due: float) -> None:
        customer = f"c{rng.randrange(CUSTOMERS)}"
        answer = await router.check(0, "test", customer, would_be(customer))
        assert answer.allowed
        latencies.append(time.perf_counter() - due)

    conn.send("start")
    calls = router.line_calls
    started_cpu, started = time.process_time(), time.perf_counter()
    if not rate:
        for _ in range(checks):
            await one(time.perf_counter())
    else:
        tasks = []
        for i in range(checks):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(due)))
        await asyncio.gather(*tasks)
    cpu = time.process_time() - started_cpu
    conn.send("stop")
    shard_cpu = conn.recv()
    latencies.sort()
    print(
        f"{checks} checks ({'one at a time' if not rate else f'{rate:.0f}/s open loop'}) in "
        f"{router.line_calls - calls} calls: CPU per check: replica side {cpu / checks * 1e6:.1f}"
        f" µs, shard side {shard_cpu / checks * 1e6:.1f} µs; latency p50 "
        f"{latencies[checks // 2] * 1e3:.2f} ms, p99 {latencies[int(checks * 0.99)] * 1e3:.2f} ms"
        f" (tallyray from {os.path.dirname(os.path.dirname(__import__('tallyray').__file__))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=0.0, help="checks/s (0: one at a time)")
    args = parser.parse_args()
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=shard, args=(theirs,))
    child.start()
    asyncio.run(replica(ours, ours.recv(), args.checks, args.rate))
    child.join()


if __name__ == "__main__":
    main()
