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
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_check_hop import CUSTOMERS, NOW, live_accounts, would_be_properties  # noqa: E402

from tallyray.actors.account import CustomerAccount  # noqa: E402
from tallyray.pricing.events import Event  # noqa: E402


def accounts() -> list[CustomerAccount]:
    """The hop benchmark's accounts, each with one event applied (a period under way)."""
    made = list(live_accounts().values())
    props = {"model": "gpt-4o", "input_tokens": 100, "output_tokens": 30}
    for account in made:
        customer = account.profile.customer_id
        account.apply([Event("e1", customer, "llm.completion", NOW - 1000, props)], NOW)
    return made


def would_be(rng: random.Random, customer: str) -> list[Event]:
    return [Event("quote_0", customer, "llm.completion", NOW, would_be_properties(rng))]


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
