"""Prometheus metrics, all in one place. Never a customer id as a label."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000)


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
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.quota_check_seconds = Histogram(
            "tallyray_quota_check_seconds",
            "Quota check latency inside the server",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "tallyray_commit_seconds",
            "Group commit latency per shard",
            ["shard"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_batch_size = Histogram(
            "tallyray_commit_batch_events",
            "Events per group commit",
            ["shard"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
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
        self.store_unavailable = Counter(
            "tallyray_store_unavailable",
            "Requests answered 503 (store or shard unavailable)",
            registry=r,
        )

    def absorb_shards(self, statuses: Iterable[Mapping[str, Any]]) -> None:
        for status in statuses:
            shard = str(status["shard"])
            for seconds in status["commit_seconds"]:
                self.commit_seconds.labels(shard).observe(seconds)
            for size in status["batch_sizes"]:
                self.commit_batch_size.labels(shard).observe(size)
            if status["checkpoint_age_seconds"] is not None:
                self.checkpoint_age.labels(shard).set(status["checkpoint_age_seconds"])
            self.shard_accounts.labels(shard).set(status["accounts"])
            self.shard_position.labels(shard).set(status["position"])
            self.quarantined_accounts.labels(shard).set(status.get("quarantined", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
