"""What a shard's apply of one commit costs per account it touches (issue 12, item 7).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_account_apply.py [--applies 20000]
        [--events-per-apply 1,2,5,10,50]

With many customers, a group commit brings each account one or two events, so the per-call
work of applying them (``ShardCore._apply``: ``CustomerAccount.record``, the flags, the
alerts, the headroom) is paid about once per event. This prepares a SQLite store with 100
customers on ``pro``, warms one :class:`~tallyray.actors.shard.ShardCore` (no Ray), then
applies ``--applies`` one-event batches round the accounts and prints the CPU time per
apply (best of five rounds). With ``--events-per-apply``, it applies the same number of
events in batches of each size given, and prints the CPU time per event: what an account's
apply costs once per call against once per event. With ``--commits-per-apply``, each apply
gives an account that many one-event commits at once, as a shard gives an account the
commits that waited for it (``CustomerAccount.record_together``).

Timings on this shared 2-core machine move by ±30 % with the load of other work, so for a
before/after the instruction count is steadier: run it under valgrind twice, with
``--applies 0`` and ``--applies 3000``, and divide the difference by 3,000::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/bench_account_apply.py --applies 3000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_apply_slices  # noqa: E402

from tallyray.actors.shard import ShardCore  # noqa: E402
from tallyray.clock import clock_for, offset_to  # noqa: E402
from tallyray.pricing import parse_timestamp  # noqa: E402
from tallyray.pricing.events import Event  # noqa: E402

CUSTOMERS = 100


async def run(
    url: str, ids: list[str], applies: int, rounds: int, per_apply: int = 1, commits: int = 1
) -> float:
    """CPU µs per apply of ``commits`` commits of ``per_apply`` events each (best of
    ``rounds``): several commits go through ``CustomerAccount.record_together``, as an
    account's waiting commits do."""
    clock = clock_for(offset_to(parse_timestamp(bench_apply_slices.NOW)))
    core = ShardCore(0, 1, url, checkpoint_seconds=3600, clock=clock)
    properties = bench_apply_slices.PROPERTIES
    try:
        await core.ingest(
            "test", [(c, f"w-{c}", "llm.completion", clock(), properties) for c in ids]
        )
        at = clock()
        best = float("inf")
        for round_ in range(rounds):
            waiting = [
                [
                    (
                        at + k,
                        [
                            Event(
                                f"r{round_}-{i}-{k}-{j}",
                                ids[i % len(ids)],
                                "llm.completion",
                                at,
                                properties,
                            )
                            for j in range(per_apply)
                        ],
                    )
                    for k in range(commits)
                ]
                for i in range(applies)
            ]
            started = time.process_time()
            for account_commits in waiting:
                core._apply("test", account_commits[0][1][0].customer_id, account_commits)
            best = min(best, time.process_time() - started)
        return best / applies * 1e6 if applies else 0.0
    finally:
        core.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--applies", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--events-per-apply",
        default="",
        help="comma-separated batch sizes: CPU per event for each (e.g. 1,2,5,10,50)",
    )
    parser.add_argument(
        "--commits-per-apply",
        default="",
        help="comma-separated counts of one-event commits an account applies at once: CPU per "
        "event for each (e.g. 1,2,3,5)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tallyray-apply-") as folder:
        url = f"sqlite:///{folder}/tallyray.db"
        ids = bench_apply_slices.prepare(url, CUSTOMERS)
        for count in (int(n) for n in args.commits_per_apply.split(",") if n):
            applies = max(1, args.applies // count)
            per_apply = asyncio.run(run(url, ids, applies, args.rounds, 1, count))
            print(
                f"{applies * count} events in applies of {count} one-event commits round "
                f"{CUSTOMERS} accounts: {per_apply / count:.2f} µs CPU per event "
                f"({per_apply:.2f} per apply)"
            )
        if args.commits_per_apply:
            return 0
        if not args.events_per_apply:
            per_apply = asyncio.run(run(url, ids, args.applies, args.rounds))
            print(
                f"{args.applies} one-event applies round {CUSTOMERS} accounts: "
                f"{per_apply:.2f} µs CPU each"
            )
            return 0
        for size in (int(n) for n in args.events_per_apply.split(",")):
            applies = max(1, args.applies // size)
            per_apply = asyncio.run(run(url, ids, applies, args.rounds, size))
            print(
                f"{applies * size} events in applies of {size} round {CUSTOMERS} accounts: "
                f"{per_apply / size:.2f} µs CPU per event ({per_apply:.2f} per apply)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
