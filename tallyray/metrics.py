"""Prometheus metrics, all in one place. Never a customer id as a label."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "BucketCounts", "Metrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000)


@dataclass
class BucketCounts:
    """A histogram a shard keeps for itself: cumulative, never reset by a read, so any
    replica (and any number of scrapers) reads the same growing counts."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total}


_SHARD_HISTOGRAMS = (
    (
        "tallyray_commit_seconds",
        "commit_seconds",
        LATENCY_BUCKETS,
        "Group commit latency per shard",
    ),
    ("tallyray_commit_batch_events", "batch_sizes", BATCH_BUCKETS, "Events per group commit"),
)
"""(metric, the shard status's key, bucket bounds, help text)."""


class _ShardHistograms(Collector):
    """The shards' own cumulative histograms, as Prometheus histograms labelled by shard."""

    def __init__(self) -> None:
        self.latest: dict[str, Mapping[str, Any]] = {}

    def collect(self) -> Iterator[HistogramMetricFamily]:
        for name, key, bounds, text in _SHARD_HISTOGRAMS:
            family = HistogramMetricFamily(name, text, labels=["shard"])
            for shard, status in sorted(self.latest.items()):
                data = status.get(key)
                if not isinstance(data, Mapping):
                    continue
                running, buckets = 0, []
                for bound, count in zip([*bounds, float("inf")], data["counts"], strict=True):
                    running += count
                    buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
                family.add_metric([shard], buckets, data["sum"])
            yield family


class _UnpricedEvents(Collector):
    """``tallyray_events_unpriced_total{env}``: events with usage no charge of their plan
    prices, flagged by the shards (each counts its own since it started; a shard's restart
    is a counter reset)."""

    def __init__(self, latest: Mapping[str, Mapping[str, Any]]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tallyray_events_unpriced",
            "Events with usage no charge of the customer's plan prices (flagged)",
            labels=["env"],
        )
        totals: dict[str, float] = {}
        for status in self.latest.values():
            for env, count in (status.get("unpriced") or {}).items():
                totals[env] = totals.get(env, 0) + count
        for env, total in sorted(totals.items()):
            family.add_metric([env], total)
        yield family


class _ShardApplies(Collector):
    """``tallyray_shard_applies_total{shard,way}`` and
    ``tallyray_shard_applied_commits_total{shard,way}``: accounts given their waiting commits
    (``tallyray.actors.unapplied``), by way — the only one (alone), several in one call
    (together), several one by one — and how many commits those were: the more go together,
    the less a shard's CPU per event."""

    def __init__(self, latest: Mapping[str, Mapping[str, Any]]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, key, text in (
            ("tallyray_shard_applies", "applies", "Accounts given their waiting commits"),
            (
                "tallyray_shard_applied_commits",
                "applied_commits",
                "Account commits given by those applies",
            ),
        ):
            family = CounterMetricFamily(name, f"{text}, by way", labels=["shard", "way"])
            for shard, status in sorted(self.latest.items()):
                for way, count in sorted((status.get(key) or {}).items()):
                    family.add_metric([shard, way], count)
            yield family


class _ShardCalls(Collector):
    """``tallyray_shard_calls_total``: this replica's hot calls to the shards, by way."""

    def __init__(self) -> None:
        self.counts: Mapping[str, int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tallyray_shard_calls",
            "Quota checks, ingest and admission calls to the shards by this replica, by way: "
            "over the line of a shard on this node (line-local), of a shard on another node "
            "(line-remote), or as a Ray call (ray)",
            labels=["way"],
        )
        for way in ("line-local", "line-remote", "ray"):
            family.add_metric([way], self.counts.get(way, 0))
        yield family


class Metrics:
    """The ingress's metrics registry. Shards report theirs through :meth:`absorb_shards`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_ingested = Counter(
            "tallyray_events_ingested",
            "Events stored and counted (not duplicates)",
            ["env"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "tallyray_events_duplicate",
            "Events already seen (same customer and id)",
            ["env"],
            registry=r,
        )
        self.events_rejected = Counter(
            "tallyray_events_rejected", "Events refused as invalid", ["env"], registry=r
        )
        self.request_batch_size = Histogram(
            "tallyray_request_batch_events",
            "Events per ingest request",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.quota_check_seconds = Histogram(
            "tallyray_quota_check_seconds",
            "Quota check latency inside the server",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._shard_histograms = _ShardHistograms()
        r.register(self._shard_histograms)
        r.register(_UnpricedEvents(self._shard_histograms.latest))
        r.register(_ShardApplies(self._shard_histograms.latest))
        self.checkpoint_age = Gauge(
            "tallyray_checkpoint_age_seconds",
            "Seconds since the shard's last checkpoint",
            ["shard"],
            registry=r,
        )
        self.shard_accounts = Gauge(
            "tallyray_shard_accounts", "Customer accounts held in memory", ["shard"], registry=r
        )
        self.shard_position = Gauge(
            "tallyray_shard_log_position",
            "Last event-log position applied",
            ["shard"],
            registry=r,
        )
        self.quarantined_accounts = Gauge(
            "tallyray_quarantined_accounts",
            "Accounts set aside after an error applying their data (their requests get 503)",
            ["shard"],
            registry=r,
        )
        self._shard_calls = _ShardCalls()
        r.register(self._shard_calls)
        self.store_unavailable = Counter(
            "tallyray_store_unavailable",
            "Requests answered 503 (store or shard unavailable)",
            registry=r,
        )

    def absorb_shard_calls(self, counts: Mapping[str, int]) -> None:
        """The router's counts of hot calls by way (:attr:`ShardRouter.calls`)."""
        self._shard_calls.counts = dict(counts)

    def absorb_shards(self, statuses: Iterable[Mapping[str, Any]]) -> None:
        for status in statuses:
            shard = str(status["shard"])
            self._shard_histograms.latest[shard] = status
            if status["checkpoint_age_seconds"] is not None:
                self.checkpoint_age.labels(shard).set(status["checkpoint_age_seconds"])
            self.shard_accounts.labels(shard).set(status["accounts"])
            self.shard_position.labels(shard).set(status["position"])
            self.quarantined_accounts.labels(shard).set(status.get("quarantined", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
