"""Timestamps and the shape of one event (tallyray/pricing/events.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyray.pricing.events import (
    MAX_ID_LENGTH,
    Event,
    EventShapeError,
    format_timestamp,
    parse_event,
    parse_timestamp,
)

# 2026-11-28T10:00:00Z: 1970…2025 is 56 years with 14 leap days (1972…2024) = 20,454 days;
# Jan…Oct 2026 = 304 days; + 27 days of November = 20,785 days × 86,400 s = 1,795,824,000 s;
# + 10 h (36,000 s) = 1,795,860,000 s.
NOV_28_10H = 1_795_860_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),  # 01:00 at +01:00 is 00:00 UTC
        ("1970-01-01T00:00:01.000001Z", 1_000_001),  # 1 s + 1 µs
        ("1970-01-02T00:00:00Z", 86_400_000_000),  # one day
        ("1969-12-31T23:59:59Z", -1_000_000),  # before the epoch
        ("2026-11-28T10:00:00Z", NOV_28_10H),
        ("2026-11-28T10:00:00+00:00", NOV_28_10H),
        ("2026-11-28T11:00:00+01:00", NOV_28_10H),  # 11:00 − 1 h = 10:00 UTC
        ("2026-11-28T05:00:00-05:00", NOV_28_10H),  # 05:00 + 5 h = 10:00 UTC
        ("2026-11-29T00:00:00+14:00", NOV_28_10H),  # 00:00 − 14 h = 10:00 the day before
        ("2026-11-28T10:00:00.250Z", NOV_28_10H + 250_000),
    ],
)
def test_parse_timestamp(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2026-11-28T10:00:00", "has no UTC offset; add 'Z' or '+01:00'"),
        ("2026-11-28", "has no UTC offset"),
        ("yesterday", "is not RFC 3339, e.g. '2026-11-28T10:00:00Z'"),
        ("", "is not RFC 3339"),
        ("2026-13-01T00:00:00Z", "is not RFC 3339"),  # no month 13
        ("2026-11-28T25:00:00Z", "is not RFC 3339"),  # no hour 25
        (1_795_860_000, "must be an RFC 3339 string"),  # epoch seconds are not accepted
        (None, "must be an RFC 3339 string"),
    ],
)
def test_parse_timestamp_rejects(value: object, fragment: str) -> None:
    with pytest.raises(EventShapeError, match="'timestamp'") as caught:
        parse_timestamp(value)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_000_001, "1970-01-01T00:00:01.000001Z"),
        (NOV_28_10H, "2026-11-28T10:00:00Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
    ],
)
def test_format_timestamp(ts: int, text: str) -> None:
    assert format_timestamp(ts) == text


# Within 2^34 s of the epoch (about 1425 to 2514); the test below checks beyond.
WITHIN = (2**34 - 1) * 1_000_000


@given(st.integers(min_value=-WITHIN, max_value=WITHIN))
def test_format_then_parse_gives_the_same_microsecond(ts: int) -> None:
    assert parse_timestamp(format_timestamp(ts)) == ts


def test_format_timestamp_far_in_the_future() -> None:
    ts = 17_181_109_393_999_999  # 2514-06-13T10:23:13.999999Z
    assert format_timestamp(ts) == "2514-06-13T10:23:13.999999Z"


# --- parse_event -----------------------------------------------------------------------------


def test_parse_a_complete_event() -> None:
    obj = {
        "id": "evt_1",
        "customer_id": "acme",
        "type": "llm.completion",
        "timestamp": "2026-11-28T10:00:00Z",
        "properties": {"model": "gpt-4o", "input_tokens": 12},
    }
    event = parse_event(obj, default_ts=0)
    assert event == Event(
        "evt_1", "acme", "llm.completion", NOV_28_10H, {"model": "gpt-4o", "input_tokens": 12}
    )
    assert (event.id, event.customer_id, event.type, event.ts) == (
        "evt_1",
        "acme",
        "llm.completion",
        NOV_28_10H,
    )


def test_defaults_fill_what_the_caller_may_omit() -> None:
    event = parse_event(
        {"type": "seat.active"}, default_ts=42, default_id="line-1", default_customer="preview"
    )
    assert event == Event("line-1", "preview", "seat.active", 42, {})


def test_given_fields_win_over_defaults() -> None:
    event = parse_event(
        {"type": "t", "id": "mine", "customer_id": "acme", "timestamp": "1970-01-01T00:00:01Z"},
        default_ts=42,
        default_id="line-1",
        default_customer="preview",
    )
    assert (event.id, event.customer_id, event.ts) == ("mine", "acme", 1_000_000)


def test_null_timestamp_takes_the_default() -> None:
    event = parse_event(
        {"type": "t", "id": "a", "customer_id": "c", "timestamp": None}, default_ts=7
    )
    assert event.ts == 7


FULL: dict[str, Any] = {"id": "e1", "customer_id": "acme", "type": "t", "properties": {}}


@pytest.mark.parametrize(
    ("obj", "defaults", "fragment"),
    [
        ([FULL], {}, "an event must be a JSON object, not list"),
        ("e1", {}, "an event must be a JSON object, not str"),
        ({**FULL, "type": None}, {}, "'type' must be a non-empty string, not None"),
        ({"id": "e1", "customer_id": "acme"}, {}, "'type' must be a non-empty string"),
        ({**FULL, "type": ""}, {}, "'type' must be a non-empty string, not ''"),
        ({**FULL, "type": 5}, {}, "'type' must be a non-empty string, not 5"),
        ({"customer_id": "acme", "type": "t"}, {}, "'id' must be a non-empty string"),
        ({"id": "e1", "type": "t"}, {}, "'customer_id' must be a non-empty string"),
        # a field that is present is checked even when there is a default
        ({**FULL, "id": None}, {"default_id": "x"}, "'id' must be a non-empty string"),
        ({**FULL, "customer_id": 7}, {"default_customer": "x"}, "'customer_id' must be"),
        ({**FULL, "id": "x" * (MAX_ID_LENGTH + 1)}, {}, "'id' is longer than 255 characters"),
        ({**FULL, "customer_id": "c" * 256}, {}, "'customer_id' is longer than 255"),
        ({**FULL, "properties": [1, 2]}, {}, "'properties' must be a JSON object"),
        ({**FULL, "properties": "tokens=5"}, {}, "'properties' must be a JSON object"),
        ({**FULL, "timestamp": "2026-11-28T10:00:00"}, {}, "has no UTC offset"),
        ({**FULL, "timestamp": 1_795_860_000}, {}, "must be an RFC 3339 string"),
    ],
)
def test_parse_event_rejects(obj: object, defaults: dict[str, str], fragment: str) -> None:
    with pytest.raises(EventShapeError) as caught:
        parse_event(obj, default_ts=0, **defaults)
    assert fragment in str(caught.value)


def test_an_id_of_exactly_the_maximum_length_is_fine() -> None:
    event = parse_event({**FULL, "id": "x" * MAX_ID_LENGTH}, default_ts=0)
    assert len(event.id) == 255
