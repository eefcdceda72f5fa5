"""Prometheus metrics (tallyray/metrics.py): the shards' histograms are cumulative, so any
number of reads, through any replica, sees the same counts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tallyray.metrics import LATENCY_BUCKETS, BucketCounts, Metrics


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        (0.0001, 0),  # ≤ 0.0005
        (0.0005, 0),  # on the bound: le="0.0005" counts it, as Prometheus does
        (0.0006, 1),
        (1.0, len(LATENCY_BUCKETS) - 1),
        (5.0, len(LATENCY_BUCKETS)),  # above every bound: only +Inf
    ],
)
def test_a_value_lands_in_the_first_bucket_that_holds_it(value: float, bucket: int) -> None:
    counts = BucketCounts(LATENCY_BUCKETS)
    counts.observe(value)
    assert counts.counts.index(1) == bucket and sum(counts.counts) == 1
    assert counts.total == value


def _status(shard: int, commits: list[float], sizes: list[int]) -> dict[str, Any]:
    seconds, batches = (
        BucketCounts(LATENCY_BUCKETS),
        BucketCounts((1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000)),
    )
    for value in commits:
        seconds.observe(value)
    for size in sizes:
        batches.observe(size)
    return {
        "shard": shard,
        "position": 7,
        "accounts": 3,
        "commit_seconds": seconds.to_json(),
        "batch_sizes": batches.to_json(),
        "checkpoint_age_seconds": 1.5,
    }


def _count(text: str, metric: str, shard: str) -> float:
    found = re.search(rf'^{metric}_count{{shard="{shard}"}} (\S+)$', text, re.M)
    assert found is not None, text
    return float(found.group(1))


def test_reading_twice_does_not_reset_or_double_the_shards_histograms() -> None:
    metrics = Metrics()
    status = _status(0, [0.002, 0.004, 0.3], [1000, 20])
    metrics.absorb_shards([status])
    first = metrics.render().decode()
    metrics.absorb_shards([status])  # a second scrape, or another replica's
    second = metrics.render().decode()
    assert first == second
    assert _count(first, "tallyray_commit_seconds", "0") == 3
    assert _count(first, "tallyray_commit_batch_events", "0") == 2
    assert 'tallyray_commit_seconds_bucket{le="0.003",shard="0"} 1.0' in first
    assert 'tallyray_commit_seconds_bucket{le="+Inf",shard="0"} 3.0' in first
    metrics.absorb_shards([_status(0, [0.002, 0.004, 0.3, 0.01], [1000, 20, 5])])
    assert _count(metrics.render().decode(), "tallyray_commit_seconds", "0") == 4


def test_the_shards_applies_are_counters_by_shard_and_way() -> None:
    metrics = Metrics()
    statuses = [
        {
            **_status(shard, [], []),
            "applies": {"alone": 4, "together": 2, "one_by_one": 1},
            "applied_commits": {"alone": 4, "together": 5, "one_by_one": 3},
        }
        for shard in (0, 1)
    ]
    metrics.absorb_shards(statuses)
    text = metrics.render().decode()
    assert 'tallyray_shard_applies_total{shard="1",way="together"} 2.0' in text
    assert 'tallyray_shard_applied_commits_total{shard="0",way="one_by_one"} 3.0' in text
    metrics.absorb_shards([_status(2, [], [])])  # a status without them: nothing breaks
    assert "tallyray_shard_applies_total" in metrics.render().decode()
