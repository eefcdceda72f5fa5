"""Checking a batch of events at the door, before any of it is sent to a shard.

The whole batch is validated first; if any event is bad, the request is refused with every
bad event named by index and nothing is stored. The work per event is kept small: ``orjson``
decodes, a few type checks, and the meters' own fold (which validates values as it goes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tallyray.errors import EventError, InvalidInput, PayloadTooLarge, Problem
from tallyray.pricing.events import (
    MAX_ID_LENGTH,
    Event,
    EventShapeError,
    format_timestamp,
    parse_event,
    parse_timestamp,
)
from tallyray.pricing.meters import MeterSet
from tallyray.pricing.periods import period_of

__all__ = ["IntakeRules", "PeriodKey", "decode_batch", "validate_events"]

PeriodKey = tuple[str, int | None]
"""How a customer's periods run: (interval, anniversary anchor or ``None`` for calendar)."""

CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"


@dataclass(frozen=True)
class IntakeRules:
    max_events: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    future_tolerance_seconds: int = 300
    grace_seconds: int = 3 * 86_400
    """How long after a period ends its late events are still accepted."""


def decode_batch(body: bytes, content_type: str, rules: IntakeRules) -> list[Any]:
    """The list of event objects in a body: a JSON array, ``{"events": [...]}``, or a
    CloudEvents batch."""
    if len(body) > rules.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is {len(body):,} bytes; the limit is {rules.max_body_bytes:,}: "
            "send fewer events per request"
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the body is not valid JSON: {error}") from None
    if isinstance(doc, dict) and "events" in doc:
        doc = doc["events"]
    if not isinstance(doc, list):
        raise InvalidInput('send a JSON array of events, or {"events": [...]}')
    if len(doc) > rules.max_events:
        raise PayloadTooLarge(
            f"{len(doc):,} events in one request; the limit is {rules.max_events:,}"
        )
    if content_type.startswith(CLOUDEVENTS_BATCH):
        return [_from_cloudevent(item) for item in doc]
    return doc


def _from_cloudevent(item: Any) -> Any:
    """A CloudEvent (``subject`` = customer, ``data`` = properties) as a Tallyray event."""
    if not isinstance(item, dict):
        return item
    event: dict[str, Any] = {
        "id": item.get("id"),
        "customer_id": item.get("subject"),
        "type": item.get("type"),
        "properties": {} if item.get("data") is None else item["data"],
    }
    if item.get("time") is not None:
        event["timestamp"] = item["time"]
    return event


def validate_events(
    items: list[Any],
    now: int,
    meters: MeterSet,
    interval_of: Callable[[str], str | PeriodKey | None],
    rules: IntakeRules,
    label: Callable[[int], str] = "[{}]".format,
    too_old: list[tuple[int, Event, str]] | None = None,
) -> list[Event]:
    """Every event checked, or :class:`EventError` naming each bad one.

    ``interval_of(customer_id)`` is the customer's billing interval (with its anniversary
    anchor, if any), or ``None`` for an unknown customer. Given ``too_old``, events older
    than their closed period's grace window go there — (index, event, why) — rather than
    being problems: the caller asks the log whether they were stored already (a retry),
    which makes them duplicates. Should the batch have other problems, they are named with
    the rest.
    """
    problems: list[Problem] = []
    events: list[Event] = []
    positions: list[int] = []
    latest = now + rules.future_tolerance_seconds * 1_000_000
    earliest_by_interval: dict[str | PeriodKey, int] = {}
    known: dict[str, str | PeriodKey | None] = {}
    for index, item in enumerate(items):
        try:
            event = _well_formed(item, now) or parse_event(item, default_ts=now)
        except EventShapeError as error:
            problems.append(Problem(label(index), str(error)))
            continue
        customer = event[1]
        interval = known.get(customer, "?")
        if interval == "?":
            interval = known[customer] = interval_of(customer)
        if interval is None:
            problems.append(
                Problem(label(index), f"unknown customer {customer!r}: create it first")
            )
            continue
        ts = event[3]
        if ts > latest:
            problems.append(
                Problem(
                    label(index),
                    f"timestamp {format_timestamp(ts)} is more than "
                    f"{rules.future_tolerance_seconds} s in the future",
                )
            )
            continue
        earliest = earliest_by_interval.get(interval)
        if earliest is None:
            earliest = earliest_by_interval[interval] = _earliest(now, interval, rules)
        if ts < earliest:
            why = (
                f"timestamp {format_timestamp(ts)} is before {format_timestamp(earliest)}: "
                "its billing period is closed and past its grace window"
            )
            if too_old is None:
                problems.append(Problem(label(index), why))
            else:
                too_old.append((index, event, why))
            continue
        events.append(event)
        positions.append(index)
    try:
        meters.fold(events, label=lambda i: label(positions[i]))
    except EventError as error:
        problems += error.problems
        order = {label(i): i for i in range(len(items))}
        problems.sort(key=lambda p: order.get(p.where, 0))
    if problems:
        if too_old:
            problems += [Problem(label(i), why) for i, _, why in too_old]
            order = {label(i): i for i in range(len(items))}
            problems.sort(key=lambda p: order.get(p.where, 0))
        raise EventError.of(problems)
    return events


_EMPTY: dict[str, Any] = {}


def _well_formed(item: Any, now: int) -> Event | None:
    """The common case, checked inline (about twice as fast as :func:`parse_event`); ``None``
    sends anything unusual to :func:`parse_event`, which also explains what is wrong."""
    if type(item) is not dict:
        return None
    event_id, customer, kind = item.get("id"), item.get("customer_id"), item.get("type")
    properties = item.get("properties", _EMPTY)
    if not (
        type(event_id) is str
        and type(customer) is str
        and type(kind) is str
        and type(properties) is dict
        and 0 < len(event_id) <= MAX_ID_LENGTH
        and 0 < len(customer) <= MAX_ID_LENGTH
        and 0 < len(kind) <= MAX_ID_LENGTH
        and event_id.isprintable()
        and customer.isprintable()
        and kind.isprintable()
    ):
        return None
    raw_ts = item.get("timestamp")
    return Event(
        event_id, customer, kind, now if raw_ts is None else parse_timestamp(raw_ts), properties
    )


def _earliest(now: int, interval: str | PeriodKey, rules: IntakeRules) -> int:
    """The oldest timestamp still accepted: the start of the period that was open
    ``grace_seconds`` ago. A period's late events are accepted until ``grace_seconds`` after
    it ended (on a daily plan with 3 days of grace, the last three days stay open)."""
    name, anchor = (interval, None) if isinstance(interval, str) else interval
    return period_of(now - rules.grace_seconds * 1_000_000, name, anchor).start
