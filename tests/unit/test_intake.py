"""The HTTP ingest path's checks, before anything reaches a shard (tallyray/serve/intake.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from tallyray.errors import EventError, InvalidInput, PayloadTooLarge, Problem
from tallyray.pricing import parse_config
from tallyray.pricing.events import Event, parse_timestamp
from tallyray.pricing.meters import MeterSet
from tallyray.serve.intake import CLOUDEVENTS_BATCH, IntakeRules, decode_batch, validate_events

US = 1_000_000
RULES = IntakeRules()  # 10,000 events, 16 MiB, 300 s into the future, 3 days of grace
JSON = "application/json"

T = parse_timestamp
NOW = T("2026-11-10T12:00:00Z")  # well past the 3-day grace of the October period

INTERVALS = {"acme": "month", "weekly": "week"}


@pytest.fixture(scope="module")
def meters() -> MeterSet:
    path = Path(__file__).resolve().parents[2] / "examples" / "llm-api" / "tallyray.json"
    return parse_config(json.loads(path.read_text())).meters


def completion(index: int = 0, customer: str = "acme", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"evt_{index}",
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": "gpt-4o-mini", "input_tokens": 100, "output_tokens": 20},
    }
    event.update(fields)
    return event


def validate(
    meters: MeterSet, items: list[Any], now: int = NOW, rules: IntakeRules = RULES, **kw: Any
) -> list[Event]:
    return validate_events(items, now, meters, INTERVALS.get, rules, **kw)


def problems_of(
    meters: MeterSet, items: list[Any], now: int = NOW, rules: IntakeRules = RULES
) -> list[Problem]:
    with pytest.raises(EventError) as caught:
        validate(meters, items, now, rules)
    return list(caught.value.problems)


# --- decode_batch: body shapes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[]", []),
        (b'[{"id": "a"}, {"id": "b"}]', [{"id": "a"}, {"id": "b"}]),
        (b'{"events": [{"id": "a"}]}', [{"id": "a"}]),
        (b'{"events": []}', []),
        # items are returned as decoded; validate_events judges them
        (b'[1, "two", null]', [1, "two", None]),
    ],
)
def test_decode_json_array_or_events_object(body: bytes, expected: list[Any]) -> None:
    assert decode_batch(body, JSON, RULES) == expected


@pytest.mark.parametrize("content_type", [CLOUDEVENTS_BATCH, f"{CLOUDEVENTS_BATCH}; charset=utf-8"])
def test_decode_cloudevents_batch(content_type: str) -> None:
    body = orjson.dumps(
        [
            {
                "specversion": "1.0",
                "id": "ce-1",
                "source": "//gateway",
                "type": "llm.completion",
                "subject": "acme",
                "time": "2026-11-10T11:00:00Z",
                "data": {"model": "gpt-4o", "input_tokens": 5, "output_tokens": 1},
            },
            # no time (the server's receipt time applies later) and no data
            {"specversion": "1.0", "id": "ce-2", "type": "seat.active", "subject": "acme"},
        ]
    )
    assert decode_batch(body, content_type, RULES) == [
        {
            "id": "ce-1",
            "customer_id": "acme",
            "type": "llm.completion",
            "properties": {"model": "gpt-4o", "input_tokens": 5, "output_tokens": 1},
            "timestamp": "2026-11-10T11:00:00Z",
        },
        {"id": "ce-2", "customer_id": "acme", "type": "seat.active", "properties": {}},
    ]


def test_cloudevents_batch_validates_like_native_events(meters: MeterSet) -> None:
    body = orjson.dumps(
        [
            {
                "id": "ce-1",
                "type": "llm.completion",
                "subject": "acme",
                "time": "2026-11-10T11:00:00Z",
                "data": {"model": "gpt-4o", "input_tokens": 5, "output_tokens": 1},
            }
        ]
    )
    (event,) = validate(meters, decode_batch(body, CLOUDEVENTS_BATCH, RULES))
    assert event == Event(
        "ce-1",
        "acme",
        "llm.completion",
        T("2026-11-10T11:00:00Z"),
        {"model": "gpt-4o", "input_tokens": 5, "output_tokens": 1},
    )


def test_a_plain_json_body_is_not_read_as_cloudevents() -> None:
    body = b'[{"id": "ce-1", "subject": "acme", "type": "t", "data": {"x": 1}}]'
    assert decode_batch(body, JSON, RULES) == [
        {"id": "ce-1", "subject": "acme", "type": "t", "data": {"x": 1}}
    ]


def test_a_cloudevent_that_is_not_an_object_is_passed_on_for_validation(
    meters: MeterSet,
) -> None:
    items = decode_batch(b'[42, {"id": "x", "type": "llm.completion"}]', CLOUDEVENTS_BATCH, RULES)
    assert items[0] == 42
    problems = problems_of(meters, items)
    assert [p.where for p in problems] == ["[0]", "[1]"]
    assert "must be a JSON object, not int" in problems[0].message
    assert "'customer_id' must be a non-empty string" in problems[1].message  # no subject


# --- decode_batch: refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2", b"{'events': []}", b"\xff\xfe"],
)
def test_non_json_body_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="not valid JSON") as caught:
        decode_batch(body, JSON, RULES)
    assert type(caught.value) is InvalidInput


@pytest.mark.parametrize(
    "body",
    [b'{"id": "a"}', b'"events"', b"42", b"null", b'{"events": {"id": "a"}}', b'{"events": null}'],
)
def test_a_body_that_is_not_a_list_of_events_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="send a JSON array of events") as caught:
        decode_batch(body, JSON, RULES)
    assert type(caught.value) is InvalidInput


@pytest.mark.parametrize("wrapped", [False, True])
def test_too_many_events_is_payload_too_large(wrapped: bool) -> None:
    rules = IntakeRules(max_events=3)

    def body(n: int) -> bytes:
        events = [{"id": str(i)} for i in range(n)]
        return orjson.dumps({"events": events} if wrapped else events)

    assert len(decode_batch(body(3), JSON, rules)) == 3  # exactly the limit is fine
    with pytest.raises(PayloadTooLarge, match="4 events in one request; the limit is 3"):
        decode_batch(body(4), JSON, rules)
    with pytest.raises(PayloadTooLarge):
        decode_batch(body(4), CLOUDEVENTS_BATCH, rules)


def test_a_body_over_the_byte_limit_is_payload_too_large() -> None:
    body = b'[{"id": "a"}]'  # 13 bytes
    assert decode_batch(body, JSON, IntakeRules(max_body_bytes=13)) == [{"id": "a"}]
    with pytest.raises(PayloadTooLarge, match="the body is 13 bytes; the limit is 12"):
        decode_batch(body, JSON, IntakeRules(max_body_bytes=12))


def test_the_size_limit_is_checked_before_the_body_is_parsed() -> None:
    # a huge body that is not even JSON is refused for its size, without decoding it
    with pytest.raises(PayloadTooLarge):
        decode_batch(b"x" * 101, JSON, IntakeRules(max_body_bytes=100))


def test_default_rules() -> None:
    assert IntakeRules() == IntakeRules(
        max_events=10_000,
        max_body_bytes=16 * 1024 * 1024,
        future_tolerance_seconds=300,
        grace_seconds=3 * 86_400,
    )


# --- validate_events: the good path --------------------------------------------------------


def test_valid_events_come_back_as_events_in_order(meters: MeterSet) -> None:
    items = [
        completion(0, timestamp="2026-11-10T11:59:00Z"),
        # no timestamp: the receipt time (now)
        {"id": "s1", "customer_id": "acme", "type": "seat.active", "properties": {"user_id": 7}},
        # an event type no meter reads is stored, not refused
        {"id": "x1", "customer_id": "acme", "type": "something.else"},
    ]
    events = validate(meters, items)
    assert [e.id for e in events] == ["evt_0", "s1", "x1"]
    assert [e.ts for e in events] == [T("2026-11-10T11:59:00Z"), NOW, NOW]
    assert events[2].properties == {}


def test_an_empty_batch_is_valid(meters: MeterSet) -> None:
    assert validate(meters, []) == []


def test_the_customer_lookup_runs_once_per_customer(meters: MeterSet) -> None:
    asked: list[str] = []

    def interval_of(customer: str) -> str | None:
        asked.append(customer)
        return INTERVALS.get(customer)

    items = [completion(i, customer=c) for i, c in enumerate(["acme", "weekly", "acme", "acme"])]
    validate_events(items, NOW, meters, interval_of, RULES)
    assert asked == ["acme", "weekly"]


# --- validate_events: customers and timestamps ---------------------------------------------


def test_unknown_customer_is_refused(meters: MeterSet) -> None:
    (problem,) = problems_of(meters, [completion(0, customer="nobody")])
    assert problem == Problem("[0]", "unknown customer 'nobody': create it first")


@pytest.mark.parametrize(
    ("timestamp", "accepted"),
    [
        ("2026-11-10T12:00:00Z", True),  # now
        ("2026-11-10T12:05:00Z", True),  # now + 300 s: the edge of the tolerance
        ("2026-11-10T12:05:00.000001Z", False),  # now + 300 s + 1 µs
        ("2026-11-10T13:05:00+01:00", True),  # the same edge, written with an offset
        ("2026-11-11T00:00:00Z", False),
    ],
)
def test_future_timestamp_tolerance(meters: MeterSet, timestamp: str, accepted: bool) -> None:
    items = [completion(0, timestamp=timestamp)]
    if accepted:
        assert validate(meters, items)[0].ts == T(timestamp)
    else:
        (problem,) = problems_of(meters, items)
        assert problem.where == "[0]"
        assert "is more than 300 s in the future" in problem.message


# Monthly plan: the November period starts 2026-11-01T00:00Z; with 3 days of grace the
# October period stays open until 2026-11-04T00:00Z (exclusive): now − start < 3 × 86,400 s.
INSIDE_GRACE = T("2026-11-03T23:59:59.999999Z")
GRACE_OVER = T("2026-11-04T00:00:00Z")


@pytest.mark.parametrize(
    ("now", "timestamp", "accepted"),
    [
        # inside the grace window: October is still open
        (INSIDE_GRACE, "2026-11-01T00:00:00Z", True),
        (INSIDE_GRACE, "2026-10-31T23:59:59.999999Z", True),
        (INSIDE_GRACE, "2026-10-01T00:00:00Z", True),  # the previous period's first µs
        (INSIDE_GRACE, "2026-09-30T23:59:59.999999Z", False),  # two periods back: never
        # the grace window has just closed: only November is open
        (GRACE_OVER, "2026-11-01T00:00:00Z", True),
        (GRACE_OVER, "2026-10-31T23:59:59.999999Z", False),
        (GRACE_OVER, "2026-10-01T00:00:00Z", False),
        # right at the start of a period, the one before is in its grace window
        (T("2026-11-01T00:00:00Z"), "2026-10-15T00:00:00Z", True),
        # December → January: December stays open for the first 3 days of January
        (T("2027-01-02T00:00:00Z"), "2026-12-31T23:00:00Z", True),
        (T("2027-01-04T00:00:00Z"), "2026-12-31T23:00:00Z", False),
    ],
)
def test_grace_window_of_the_previous_period(
    meters: MeterSet, now: int, timestamp: str, accepted: bool
) -> None:
    items = [completion(0, timestamp=timestamp)]
    if accepted:
        assert [e.ts for e in validate(meters, items, now)] == [T(timestamp)]
    else:
        (problem,) = problems_of(meters, items, now)
        assert problem.where == "[0]"
        assert problem.message.startswith(f"timestamp {timestamp} is before ")
        assert problem.message.endswith("its billing period is closed and past its grace window")


def test_the_earliest_accepted_time_is_named_in_the_message(meters: MeterSet) -> None:
    (problem,) = problems_of(meters, [completion(0, timestamp="2026-10-31T00:00:00Z")])
    assert "is before 2026-11-01T00:00:00Z" in problem.message
    (problem,) = problems_of(
        meters, [completion(0, timestamp="2026-09-30T00:00:00Z")], INSIDE_GRACE
    )
    assert "is before 2026-10-01T00:00:00Z" in problem.message


@pytest.mark.parametrize(
    ("now", "timestamp", "accepted"),
    [
        # weekly plan: 2026-11-23 is a Monday; the week before started 2026-11-16
        (T("2026-11-25T23:59:59Z"), "2026-11-16T00:00:00Z", True),  # 2 d 23:59:59 in
        (T("2026-11-26T00:00:00Z"), "2026-11-16T00:00:00Z", False),  # 3 days in: closed
        (T("2026-11-26T00:00:00Z"), "2026-11-23T00:00:00Z", True),
    ],
)
def test_grace_window_follows_the_customers_interval(
    meters: MeterSet, now: int, timestamp: str, accepted: bool
) -> None:
    items = [completion(0, customer="weekly", timestamp=timestamp)]
    if accepted:
        assert len(validate(meters, items, now)) == 1
    else:
        assert [p.where for p in problems_of(meters, items, now)] == ["[0]"]


def test_each_customer_gets_its_own_earliest_time(meters: MeterSet) -> None:
    # now: Wednesday 2026-11-04 12:00. Monthly: November is 3.5 days old, so only November
    # is open. Weekly: the week of Monday 11-02 is 2.5 days old, so the week of 10-26 is open.
    now = T("2026-11-04T12:00:00Z")
    ts = "2026-10-31T12:00:00Z"
    items = [completion(0, customer="weekly", timestamp=ts), completion(1, timestamp=ts)]
    assert [p.where for p in problems_of(meters, items, now)] == ["[1]"]


def test_a_shorter_grace_setting_is_honoured(meters: MeterSet) -> None:
    rules = IntakeRules(grace_seconds=3_600)  # one hour
    items = [completion(0, timestamp="2026-10-31T23:00:00Z")]
    assert len(validate(meters, items, T("2026-11-01T00:59:59Z"), rules)) == 1
    assert len(problems_of(meters, items, T("2026-11-01T01:00:00Z"), rules)) == 1


# --- validate_events: event shapes and meter values ----------------------------------------


def props(**p: Any) -> dict[str, Any]:
    return completion(0, properties=p)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("text", "an event must be a JSON object, not str"),
        ({"customer_id": "acme", "type": "t"}, "'id' must be a non-empty string, not None"),
        ({"id": "a", "customer_id": "acme"}, "'type' must be a non-empty string, not None"),
        (completion(0, timestamp="yesterday"), "'timestamp' 'yesterday' is not RFC 3339"),
        (completion(0, timestamp="2026-11-10T11:00:00"), "has no UTC offset"),
        (completion(0, properties=[1]), "'properties' must be a JSON object"),
        (
            props(model="gpt-4o", input_tokens="lots", output_tokens=1),
            "meter 'input_tokens': property 'input_tokens' must be a number, got 'lots'",
        ),
        (
            props(model="gpt-4o", input_tokens=True, output_tokens=1),
            "meter 'input_tokens': property 'input_tokens' must be a number, got True",
        ),
        (
            props(model="gpt-4o", input_tokens=1),
            "meter 'output_tokens' needs property 'output_tokens', which is missing",
        ),
        (
            props(model="gpt-4o", input_tokens=float("nan"), output_tokens=1),
            "meter 'input_tokens': property 'input_tokens' nan is not a finite number",
        ),
        (
            props(model={"name": "gpt-4o"}, input_tokens=1, output_tokens=1),
            "meter 'input_tokens' groups by ['model']: those properties must be strings",
        ),
        (
            {"id": "s", "customer_id": "acme", "type": "seat.active", "properties": {}},
            "meter 'seats' needs property 'user_id', which is missing",
        ),
        (
            {
                "id": "s",
                "customer_id": "acme",
                "type": "seat.active",
                "properties": {"user_id": 1.5},
            },
            "meter 'seats': property 'user_id' must be a string or integer, got 1.5",
        ),
    ],
)
def test_bad_event_is_named_with_the_reason(meters: MeterSet, item: Any, message: str) -> None:
    (problem,) = problems_of(meters, [completion(0), item, completion(2)])
    assert problem.where == "[1]"
    assert message in problem.message


def test_every_bad_event_is_listed_in_index_order(meters: MeterSet) -> None:
    items = [
        {"id": "a", "type": "llm.completion"},  # 0: no customer
        props(model="m", input_tokens="lots", output_tokens=1),  # 1: meter value
        completion(2, customer="nobody"),  # 2: unknown customer
        completion(3),  # 3: fine
        completion(4, timestamp="2026-11-10T12:05:00.000001Z"),  # 4: future
        {"id": "f", "customer_id": "acme", "type": "seat.active", "properties": {}},  # 5: meter
        completion(6, timestamp="2026-09-10T00:00:00Z"),  # 6: period closed
        completion(7),  # 7: fine
        props(model="m", input_tokens=1),  # 8: meter (missing value)
    ]
    with pytest.raises(EventError) as caught:
        validate(meters, items)
    error = caught.value
    assert [(p.where, p.message.split(" ")[0]) for p in error.problems] == [
        ("[0]", "'customer_id'"),
        ("[1]", "meter"),
        ("[2]", "unknown"),
        ("[4]", "timestamp"),
        ("[5]", "meter"),
        ("[6]", "timestamp"),
        ("[8]", "meter"),
    ]
    assert all(p.message for p in error.problems)
    assert error.message == "7 events are invalid; nothing was stored"
    assert error.to_json()["error"]["details"][1] == {
        "where": "[1]",
        "message": "meter 'input_tokens': property 'input_tokens' must be a number, got 'lots'",
    }


def test_meter_problems_are_named_by_their_position_in_the_request(meters: MeterSet) -> None:
    # the meters only see the events that passed the first checks; their problems must still
    # name the index in the request, not in that shorter list
    items = [
        completion(0, customer="nobody"),
        completion(1, customer="nobody"),
        props(model="m", input_tokens=None, output_tokens=1),  # index 2
    ]
    problems = problems_of(meters, items)
    assert [p.where for p in problems] == ["[0]", "[1]", "[2]"]
    assert "must be a number, got None" in problems[2].message


def test_a_custom_label_names_the_problems(meters: MeterSet) -> None:
    items = [props(model="m", input_tokens="x", output_tokens=1), completion(1, customer="x")]
    with pytest.raises(EventError) as caught:
        validate(meters, items, label=lambda i: f"line {i + 1}")
    assert [p.where for p in caught.value.problems] == ["line 1", "line 2"]


def test_many_bad_events_are_all_listed_in_order(meters: MeterSet) -> None:
    # every third event unknown, every third a bad value, every third fine
    items: list[Any] = []
    for i in range(30):
        if i % 3 == 0:
            items.append(completion(i, customer="nobody"))
        elif i % 3 == 1:
            items.append(props(model="m", input_tokens="x", output_tokens=1))
        else:
            items.append(completion(i))
    problems = problems_of(meters, items)
    assert [p.where for p in problems] == [f"[{i}]" for i in range(30) if i % 3 != 2]
