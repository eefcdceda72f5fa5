"""Rate synthetic LLM events through meters and a 4-charge plan, on one core.

    python bench/bench_pricing.py [--events 1000000] [--batch 1000] [--customers 100]

Prints events/s for the meter fold (in batches, as a shard actor folds them), for the pure
part of a shard's ingest (each batch split by customer, each customer's events recorded into
its live account, as a group commit applies them), and the time to rate the folded usage into
an invoice preview. Event generation is not timed.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter, defaultdict

from tallyray.actors.account import CustomerAccount, Profile
from tallyray.actors.limits import Limits
from tallyray.pricing import Event, parse_config, rate, usage_cost

CONFIG = {
    "meters": [
        {
            "key": "input_tokens",
            "event_type": "llm.completion",
            "aggregation": "sum",
            "value": "input_tokens",
            "group_by": ["model"],
        },
        {
            "key": "output_tokens",
            "event_type": "llm.completion",
            "aggregation": "sum",
            "value": "output_tokens",
            "group_by": ["model"],
        },
        {"key": "requests", "event_type": "llm.completion", "aggregation": "count"},
        {
            "key": "users",
            "event_type": "llm.completion",
            "aggregation": "unique_count",
            "value": "user",
        },
    ],
    "plans": [
        {
            "key": "bench",
            "currency": "EUR",
            "interval": "month",
            "base_fee": "49.00",
            "charges": [
                {
                    "meter": "input_tokens",
                    "model": "graduated",
                    "tiers": [
                        {"up_to": 1000000, "unit_amount": "0"},
                        {"up_to": 10000000, "unit_amount": "0.000002"},
                        {"up_to": None, "unit_amount": "0.0000015", "flat_amount": "5.00"},
                    ],
                },
                {
                    "meter": "output_tokens",
                    "filter": {"model": "gpt-4o"},
                    "model": "per_unit",
                    "unit_amount": "0.00001",
                },
                {
                    "meter": "requests",
                    "model": "package",
                    "package_size": 1000,
                    "package_amount": "2.00",
                },
                {
                    "meter": "users",
                    "model": "volume",
                    "tiers": [
                        {"up_to": 100, "unit_amount": "1.00"},
                        {"up_to": None, "unit_amount": "0.80"},
                    ],
                },
            ],
        },
    ],
}

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-70b"]
LIMITS = Limits()


def synthetic_events(n: int, seed: int = 1, customers: int = 1) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            f"evt_{i}",
            f"cust-{rng.randrange(customers)}" if customers > 1 else "acme",
            "llm.completion",
            1_764_000_000_000_000 + i,
            {
                "model": MODELS[i % 4],
                "input_tokens": rng.randrange(100, 8000),
                "output_tokens": rng.randrange(10, 2000),
                "user": f"user-{rng.randrange(500)}",
            },
        )
        for i in range(n)
    ]


def ingest_batch(
    accounts: dict[str, CustomerAccount], batch: list[Event], at: int, room: list[int]
) -> None:
    """What a shard does with one request's events that is not I/O: make sure they cannot
    take an account past a cap (ShardCore._check_limits: one comparison with the shard's
    least headroom ``room[0]`` while it covers the batch, else one question per account),
    split them by customer, record each customer's events into its account (as its group
    commit applies them) and keep the least headroom up to date."""
    if len(batch) > room[0]:
        counts = Counter(e[1] for e in batch)
        assert not [c for c, n in counts.items() if accounts[c].near_limits(n, LIMITS)]
    by_customer: dict[str, list[Event]] = defaultdict(list)
    for e in batch:
        by_customer[e[1]].append(e)
    for customer, events in by_customer.items():
        account = accounts[customer]
        account.record(events, at)
        groups, values = account.crowding()
        room[0] = min(room[0], LIMITS.groups_per_meter - groups, LIMITS.unique_values - values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--customers", type=int, default=100, help="accounts in the ingest run")
    parser.add_argument(
        "--unpriced",
        choices=["flag", "allow", "reject"],
        default=None,
        help="the plan's unpriced mode (its output_tokens charge prices gpt-4o only, so 3 of "
        "the 4 models are unpriced; default: the plan's default)",
    )
    parser.add_argument(
        "--cover-all",
        action="store_true",
        help="the output_tokens charge filters on all 4 models: every group is looked up, "
        "none is unpriced",
    )
    args = parser.parse_args()

    if args.unpriced is not None:
        CONFIG["plans"][0]["unpriced"] = args.unpriced  # type: ignore[index]
    if args.cover_all:
        CONFIG["plans"][0]["charges"][1]["filter"] = {"model": MODELS}  # type: ignore[index]
    config = parse_config(CONFIG)
    plan = config.plan("bench")
    events = synthetic_events(args.events)
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]

    fold_rates = []
    for _ in range(args.repeat):
        usage = config.meters.empty_usage()
        start = time.perf_counter()
        for batch in batches:
            config.meters.fold(batch, into=usage)
        fold_rates.append(len(events) / (time.perf_counter() - start))

    ingest_rates = []
    spread = synthetic_events(args.events, seed=2, customers=args.customers)
    spread_batches = [spread[i : i + args.batch] for i in range(0, len(spread), args.batch)]
    for _ in range(args.repeat):
        accounts = {
            f"cust-{c}": CustomerAccount(Profile(f"cust-{c}", "EUR", plan), config.meters)
            for c in range(args.customers)
        }
        room = [min(LIMITS.groups_per_meter, LIMITS.unique_values)]
        start = time.perf_counter()
        for at, batch in enumerate(spread_batches):
            ingest_batch(accounts, batch, at, room)
        ingest_rates.append(len(spread) / (time.perf_counter() - start))

    start = time.perf_counter()
    for _ in range(1000):
        usage_cost(plan, usage, config.meters.meters)
    cost_us = (time.perf_counter() - start) / 1000 * 1e6

    start = time.perf_counter()
    preview = rate(plan, usage, config.meters.meters, config.rounding)
    rate_ms = (time.perf_counter() - start) * 1e3

    best = max(fold_rates)
    print(f"events: {len(events):,} in batches of {args.batch:,}; 4 meters, 4-charge plan")
    print(
        "meter fold: "
        + ", ".join(f"{r:,.0f}" for r in fold_rates)
        + f" events/s (best {best:,.0f})"
    )
    print(
        f"shard ingest into {args.customers} accounts: "
        + ", ".join(f"{r:,.0f}" for r in ingest_rates)
        + f" events/s (best {max(ingest_rates):,.0f})"
    )
    print(f"live usage cost of the plan: {cost_us:,.0f} µs per evaluation")
    print(f"rate into an invoice preview: {rate_ms:.2f} ms; total {preview.total} EUR")


if __name__ == "__main__":
    main()
