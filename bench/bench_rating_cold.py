"""A quota check's rating, hot and cold: what ``CustomerAccount.check`` costs back to back and
what it costs when the CPU's caches were filled by something else since the last check.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_rating_cold.py [--checks 20000] [--evict-mb 16]

In the server a shard rates one check per wake-up at 1,000 checks/s on 2 cores, and between
two of them the replica, the load generator and the other shard have run on the same cores:
the check finds the interpreter's and the accounts' memory out of the caches. Here 1,000
accounts on the example's ``pro`` plan (a credit grant each, one event applied) are checked
with would-be events like the benchmarks' — first back to back, then with ``--evict-mb`` MB
of other memory written between two checks (the eviction is not timed: only the checks are,
with ``time.thread_time``). Printed: CPU µs per check each way.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from tallyray.actors.account import CustomerAccount, Profile
from tallyray.pricing import parse_config
from tallyray.pricing.credits import CreditGrant
from tallyray.pricing.events import Event

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "llm-api" / "tallyray.json"
NOW = 1_765_000_000_000_000
CUSTOMERS = 1000


def accounts() -> list[CustomerAccount]:
    config = parse_config(json.loads(CONFIG.read_text()))
    made = []
    million = Decimal(1_000_000)
    for i in range(CUSTOMERS):
        account = CustomerAccount(Profile(f"c{i}", "EUR", config.plan("pro")), config.meters)
        account.add_grant(CreditGrant("g", million, "EUR", million, created_at=NOW - 10**9))
        props = {"model": "gpt-4o", "input_tokens": 100, "output_tokens": 30}
        account.apply([Event("e1", f"c{i}", "llm.completion", NOW - 1000, props)], NOW)
        made.append(account)
    return made


def would_be(rng: random.Random, customer: str) -> list[Event]:
    props: dict[str, Any] = {
        "model": rng.choice(["gpt-4o", "gpt-4o-mini"]),
        "input_tokens": rng.randint(50, 4000),
        "output_tokens": 300,
    }
    return [Event("quote_0", customer, "llm.completion", NOW, props)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--evict-mb", type=int, default=16, help="memory written between checks")
    args = parser.parse_args()
    rng = random.Random(1)
    live = accounts()
    work = []
    for _ in range(args.checks):
        account = live[rng.randrange(CUSTOMERS)]
        work.append((account, would_be(rng, account.profile.customer_id)))

    started = time.thread_time()
    for account, events in work:
        account.check(events, NOW)
    hot = (time.thread_time() - started) / len(work)

    other = bytearray(args.evict_mb << 20)
    spent = 0.0
    for i, (account, events) in enumerate(work):
        other[:] = bytes([i & 0xFF]) * len(other)  # another process's work, in the caches
        started = time.thread_time()
        account.check(events, NOW)
        spent += time.thread_time() - started
    cold = spent / len(work)
    print(
        f"{len(work)} checks on 'pro', {CUSTOMERS} accounts: CPU per check back to back "
        f"{hot * 1e6:.1f} µs, after {args.evict_mb} MB of other memory {cold * 1e6:.1f} µs"
    )


if __name__ == "__main__":
    main()
