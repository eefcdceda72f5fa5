"""The column-wise replay gives exactly the usage the shards' fold gives, whichever path
(vectorised or exact fallback) each meter takes."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest

from tallyray.pricing.config import parse_meter
from tallyray.pricing.events import Event
from tallyray.pricing.meters import MeterSet, PerEventSum
from tallyray.simulation.replay import EventColumns, replay

METERS = MeterSet(
    (
        parse_meter(m)
        for m in [
        {"key": "input_tokens", "event_type": "llm.completion", "aggregation": "sum",
         "value": "input_tokens", "group_by": ["model"]},
        {"key": "requests", "event_type": "llm.completion", "aggregation": "count"},
        {"key": "mini_requests", "event_type": "llm.completion", "aggregation": "count",
         "filter": {"model": ["gpt-4o-mini"]}},
        {"key": "biggest", "event_type": "llm.completion", "aggregation": "max",
         "value": "output_tokens", "group_by": ["model", "region"]},
        {"key": "cached", "event_type": "llm.completion", "aggregation": "sum",
         "value": "usage.cached"},
        {"key": "seats", "event_type": "seat.active", "aggregation": "unique_count",
         "value": "user_id", "group_by": ["team"]},
        {"key": "gpu_seconds", "event_type": "gpu.job", "aggregation": "sum",
         "value": "seconds", "group_by": ["gpu"]},
        {"key": "storage", "event_type": "storage.gauge", "aggregation": "latest",
         "value": "gb"},
        {"key": "gpu_hours", "event_type": "gpu.job", "aggregation": "weighted_sum",
         "value": "seconds", "unit": "hour"},
    ]
    # a clamped percentage charge on input tokens keeps 10 % of each event, at most 50
    ),
    [PerEventSum("%percentage:input_tokens:10::50", "input_tokens",
                 lambda v: min(v * Decimal("0.1"), Decimal(50)))],
)  # fmt: skip


def _events(rng: random.Random, n: int, fractional_gpu: bool, mixed_ids: bool) -> list[Event]:
    out = []
    for i in range(n):
        kind = rng.choice(["llm.completion", "llm.completion", "seat.active", "gpu.job",
                           "storage.gauge", "other.type"])  # fmt: skip
        props: dict[str, Any]
        if kind == "llm.completion":
            props = {"model": rng.choice(["gpt-4o", "gpt-4o-mini"]),
                     "input_tokens": rng.randint(0, 5000), "output_tokens": rng.randint(0, 900),
                     "usage": {"cached": rng.randint(0, 100)}}  # fmt: skip
            if rng.random() < 0.5:
                props["region"] = rng.choice(["eu", "us"])
        elif kind == "seat.active":
            users = ["ana", "ben", "cy", 7, 8] if mixed_ids else ["ana", "ben", "cy"]
            props = {"user_id": rng.choice(users),
                     "team": rng.choice(["a", "b"])}  # fmt: skip
        elif kind == "gpu.job":
            seconds: Any = rng.randint(1, 300)
            if fractional_gpu and rng.random() < 0.3:
                seconds = rng.randint(1, 3000) / 10
            props = {"gpu": rng.choice(["h100", "a10"]), "seconds": seconds}
        elif kind == "storage.gauge":
            props = {"gb": rng.randint(0, 50)}
        else:
            props = {"anything": "goes"}
        out.append(Event(f"e{i}", "c", kind, 1_000_000 + rng.randint(0, 10_000), props))
    return out


@pytest.mark.parametrize(
    ("seed", "fractional_gpu", "mixed_ids"),
    [
        (1, False, False),  # every meter but the latest one vectorised, in one decode
        (2, True, False),  # GPU seconds with fractions: that meter folded exactly
        (3, False, True),  # user ids strings and numbers: a decode per event type
        (4, True, True),
    ],
)
def test_replay_gives_the_folds_usage_in_every_bucket(
    seed: int, fractional_gpu: bool, mixed_ids: bool
) -> None:
    rng = random.Random(seed)
    events = _events(rng, 3000, fractional_gpu, mixed_ids)
    buckets = np.asarray([rng.randint(-1, 4) for _ in events], dtype=np.int64)
    columns = EventColumns(
        bucket=buckets,
        event_id=[e.id for e in events],
        type=[e.type for e in events],
        ts=np.asarray([e.ts for e in events], dtype=np.int64),
        properties=[orjson.dumps(e.properties).decode() for e in events],
    )
    ends = [2_000_000 + b for b in range(5)]
    got = replay(METERS, columns, 5, ends)
    for b in range(5):
        expected = METERS.fold([e for e, eb in zip(events, buckets, strict=True) if eb == b])
        assert got[b].to_json() == expected.to_json(), f"bucket {b}"
        assert got[b].end == ends[b]
    assert any(u.groups["%percentage:input_tokens:10::50"] for u in got)
    assert any(u.groups["gpu_hours"] for u in got)


def test_an_empty_log_gives_empty_usage() -> None:
    empty = EventColumns(np.zeros(0, dtype=np.int64), [], [], np.zeros(0, dtype=np.int64), [])
    (usage,) = replay(METERS, empty, 1)
    assert usage.is_empty()


def test_properties_whose_types_clash_are_folded_exactly() -> None:
    # "model" is a string in one event and a number in the other: Arrow cannot type the
    # column, so the exact fold takes both.
    events = [
        Event("a", "c", "llm.completion", 1, {"model": "gpt-4o", "input_tokens": 5,
                                                "output_tokens": 1, "usage": {"cached": 0}}),
        Event("b", "c", "llm.completion", 2, {"model": 4, "input_tokens": 7,
                                                "output_tokens": 2, "usage": {"cached": 1}}),
    ]  # fmt: skip
    columns = EventColumns(
        np.zeros(2, dtype=np.int64),
        ["a", "b"],
        ["llm.completion"] * 2,
        np.asarray([1, 2], dtype=np.int64),
        [orjson.dumps(e.properties).decode() for e in events],
    )
    (usage,) = replay(METERS, columns, 1)
    assert usage.groups["input_tokens"] == {("gpt-4o",): 5, (4,): 7}
    assert usage.to_json() == METERS.fold(events).to_json()
