"""Segments: usage keeps the price it was used at (tallyray/pricing/segments.py and the live
account's cut periods).

Prices, as in test_account.py: plan ``basic`` 0.01 a token, ``premium`` 0.02 a token; seats
(unique users) on volume, 1 seat = 10.00. The open period is November 2026; the plan changes
from basic to premium on 15 November at noon (``SWITCH``).
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from test_account import CONFIG, METERS, NOV, NOW, OCT, grant, remaining, seat, tokens

from tallyray.actors.account import CustomerAccount, Profile
from tallyray.pricing.events import parse_timestamp
from tallyray.pricing.segments import (
    PlanSpan,
    cuts_within,
    merge_spans,
    segment_bounds,
    segment_start,
    span_at,
)

D = Decimal
T = parse_timestamp
DEC = T("2026-12-01T00:00:00Z")
SWITCH = T("2026-11-15T12:00:00Z")
AFTER = T("2026-11-20T12:00:00Z")
BASIC = CONFIG.plan("basic")
PREMIUM = CONFIG.plan("premium")
B = PlanSpan(OCT, BASIC, 1)
P = PlanSpan(SWITCH, PREMIUM, 1)


# --- the pure split ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (NOV, NOV),  # the period's first moment: first segment
        (SWITCH - 1, NOV),  # the last microsecond before the change
        (SWITCH, SWITCH),  # the change's own moment belongs to the new plan
        (AFTER, SWITCH),
        (DEC - 1, SWITCH),
    ],
)
def test_an_event_belongs_to_the_segment_its_timestamp_falls_in(ts: int, expected: int) -> None:
    assert segment_start(NOV, (SWITCH,), ts) == expected


@pytest.mark.parametrize(
    ("spans", "period", "cuts"),
    [
        ((B, P), (NOV, DEC), (SWITCH,)),  # a change inside the period cuts it
        ((B, P), (OCT, NOV), ()),  # not inside October
        ((B, PlanSpan(NOV, PREMIUM, 1)), (NOV, DEC), ()),  # on the boundary: no cut
        ((PlanSpan(SWITCH, BASIC, 1),), (NOV, DEC), ()),  # the first span cuts nothing
        ((B, P, PlanSpan(AFTER, BASIC, 2)), (NOV, DEC), (SWITCH, AFTER)),
    ],
)
def test_only_a_later_span_inside_a_period_cuts_it(
    spans: tuple[PlanSpan, ...], period: tuple[int, int], cuts: tuple[int, ...]
) -> None:
    assert cuts_within(spans, *period) == cuts


@pytest.mark.parametrize(
    ("ts", "label"),
    [(OCT - 1, "basic@1"), (OCT, "basic@1"), (SWITCH - 1, "basic@1"), (SWITCH, "premium@1")],
)
def test_the_span_in_force(ts: int, label: str) -> None:
    found = span_at((B, P), ts)
    assert found is not None and found.label == label


def test_spans_merge_a_repeated_version_and_sort() -> None:
    again = PlanSpan(NOV, BASIC, 1)  # re-subscribed to the same version: no new segment
    assert merge_spans([P, again, B]) == (B, P)
    assert merge_spans([B, PlanSpan(NOV, BASIC, 2)]) == (B, PlanSpan(NOV, BASIC, 2))


def test_segment_bounds() -> None:
    assert segment_bounds(NOV, DEC, [SWITCH]) == [(NOV, SWITCH), (SWITCH, DEC)]
    assert segment_bounds(NOV, DEC, []) == [(NOV, DEC)]


# --- the live account ----------------------------------------------------------------------


def before_change() -> Profile:
    return Profile("cust", "USD", BASIC, spans=(B,))


def after_change() -> Profile:
    return Profile("cust", "USD", PREMIUM, spans=(B, P))


def test_a_plan_change_leaves_the_spend_already_seen_unchanged() -> None:
    acct = CustomerAccount(before_change(), METERS)
    acct.add_grant(grant("g", "100"))
    acct.apply([tokens(100, NOW)], NOW)  # 100 × 0.01 = 1.00 under basic
    assert acct.period_spend(NOW) == D("1.00")
    change = acct.set_profile(after_change())
    assert change == {NOV: D("0")}  # nothing re-rated: the customer saw 1.00
    acct.rebook(change, SWITCH)
    assert acct.period_spend(AFTER) == D("1.00")
    # after the change, premium: 100 × 0.02 = 2.00
    assert acct.apply([tokens(100, AFTER)], AFTER) == D("2.00")
    # a late event from before the change keeps basic's price: 50 × 0.01 = 0.50
    assert acct.apply([tokens(50, SWITCH - 1)], AFTER) == D("0.50")
    assert acct.period_spend(AFTER) == D("3.50")  # 1.50 basic + 2.00 premium
    assert remaining(acct) == {"g": D("96.50")}
    assert [(s.plan, s.start, s.end, s.spend) for s in acct.segments(NOV)] == [
        ("basic@1", NOV, SWITCH, D("1.50")),
        ("premium@1", SWITCH, DEC, D("2.00")),
    ]


@pytest.mark.parametrize(
    ("events", "cost"),
    [
        ([tokens(10, AFTER)], "0.20"),  # 10 × 0.02, premium
        ([tokens(10, SWITCH - 1)], "0.10"),  # 10 × 0.01, basic
        ([tokens(10, SWITCH - 1), tokens(10, AFTER)], "0.30"),
        # a seat is counted per segment: x is new after the change, 1 seat = 10.00
        ([seat("x", AFTER)], "10"),
        ([seat("x", SWITCH - 1)], "0"),  # x already holds a seat before the change
    ],
)
def test_a_quota_check_prices_each_event_in_its_segment(events: list, cost: str) -> None:
    acct = CustomerAccount(after_change(), METERS)
    acct.apply([tokens(100, NOW), seat("x", NOW)], NOW)
    assert acct.price(events) == D(cost)
    assert acct.check(events, AFTER).cost == D(cost)


def test_a_period_whole_under_the_new_plan_is_not_cut() -> None:
    acct = CustomerAccount(after_change(), METERS)
    acct.apply([tokens(100, OCT)], NOW)  # October: before the change, basic
    acct.apply([tokens(100, DEC)], NOW)  # December: premium
    assert acct.spend == {OCT: D("1.00"), DEC: D("2.00")}
    assert acct.segments(OCT) == () and acct.segments(DEC) == ()


def test_a_restart_keeps_the_segments() -> None:
    """A checkpoint holds each segment's usage; a restored account prices them the same, and
    replaying events after it lands them by timestamp."""
    acct = CustomerAccount(before_change(), METERS)
    acct.apply([tokens(100, NOW)], NOW)
    acct.rebook(acct.set_profile(after_change()), SWITCH)
    acct.apply([tokens(100, AFTER)], AFTER)
    stored = json.loads(json.dumps(acct.snapshot()))
    back = CustomerAccount.restore(stored, after_change(), METERS, AFTER)
    assert back.spend == acct.spend == {NOV: D("3.00")}  # 1.00 + 2.00
    assert back.segments(NOV) == acct.segments(NOV)
    assert {seg: u.end for seg, u in back.parts[NOV].items()} == {NOV: SWITCH, SWITCH: DEC}
    # a checkpoint taken before the change: its usage is the first segment's
    early = CustomerAccount(before_change(), METERS)
    early.apply([tokens(100, NOW)], NOW)
    snap = json.loads(json.dumps(early.snapshot()))
    replayed = CustomerAccount.restore(snap, after_change(), METERS, AFTER)
    replayed.apply([tokens(100, AFTER)], AFTER)
    assert replayed.spend == {NOV: D("3.00")}
    assert replayed.segments(NOV) == acct.segments(NOV)


def test_closing_a_cut_period_hands_its_segments_over() -> None:
    acct = CustomerAccount(after_change(), METERS)
    acct.apply([tokens(100, NOW), tokens(300, AFTER)], AFTER)
    (closed,) = acct.due_periods(DEC)
    assert closed.spend == D("7.00")  # 100 × 0.01 + 300 × 0.02
    assert [s.to_json()["plan"] for s in closed.segments] == ["basic", "premium"]
    assert [s.to_json()["costs"] for s in closed.segments] == [["1.00", "0"], ["6.00", "0"]]
    acct.drop_periods([NOV])
    assert acct.parts == {} and acct.part_costs == {}


# --- the invoice: each segment's usage under its own plan -----------------------------------


def test_the_invoice_prices_each_segment_under_its_plan() -> None:
    """November (30 days) cut on the 15th: 14 days of Halves (no base fee), 16 of Pro."""
    from test_invoice_builder import _CONFIG as BUILDER
    from test_invoice_builder import NO_TAX, NOV, usage_of

    from tallyray.invoicing.builder import InvoiceInput, Segment, UsageSegment, build_invoice
    from tallyray.pricing.money import currency
    from tallyray.pricing.periods import Proration

    cut = T("2026-11-15T00:00:00Z")
    halves, pro = BUILDER.plan("halves"), BUILDER.plan("pro")
    first = usage_of(BUILDER, units={"a": 101})
    second = usage_of(BUILDER, gpt4o=2_000_000, mini=12_000_000, requests=1_500)
    whole = first.plus(second)
    doc = build_invoice(
        InvoiceInput(
            customer={"id": "acme"},
            seller={"name": "Tallyray GmbH"},
            locale="en",
            currency=currency("EUR"),
            period=NOV,
            segments=[Segment(halves, 1, Proration(14, 30)), Segment(pro, 2, Proration(16, 30))],
            usage=whole,
            meters=BUILDER.meters.meters,
            burned={},
            tax=NO_TAX,
            usage_segments=[
                UsageSegment(halves, 1, NOV.start, cut, first),
                UsageSegment(pro, 2, cut, NOV.end, second),
            ],
        )
    )
    assert [s["plan"] + str(s["version"]) for s in doc["segments"]] == ["halves1", "pro2"]
    lines = [(line["kind"], line["description"], line["amount"]) for line in doc["lines"]]
    assert lines == [
        ("base_fee", "Pro base fee", "26.13"),  # 49.00 × 16/30 = 26.133…
        ("usage", "units (sku=a) (Halves v1)", "0.51"),  # 101 × 0.005 = 0.505, half up
        ("usage", "units (sku=b) (Halves v1)", "0.00"),
        ("usage", "units (sku=c) (Halves v1)", "0.00"),
        ("usage", "input_tokens (model=gpt-4o) (Pro v2)", "5.00"),  # 2,000,000 × 0.0000025
        # 1,000,000 free, 9,000,000 × 0.000002 = 18.00, 2,000,000 × 0.0000015 + 5.00 = 8.00
        ("usage", "gpt-4o-mini input tokens (Pro v2)", "26.00"),
        ("usage", "API requests (per 1,000) (Pro v2)", "4.00"),  # 1,500 requests: 2 packages
    ]
    # minimum 100 × 16/30 = 53.33 < 61.64 charged: no true-up
    assert doc["subtotal"] == "61.64"
    assert all(line.get("segment") for line in doc["lines"] if line["kind"] == "usage")


def test_a_gauge_in_a_cut_period_holds_to_the_end_of_its_segment() -> None:
    """A segment's usage ends where the segment does, so a ``weighted_sum`` reading before
    the change is held until the change, not to the period's end."""
    acct = CustomerAccount(after_change(), METERS)
    acct.apply([tokens(100, NOW), tokens(100, AFTER)], AFTER)
    ends = {seg: usage.end for seg, usage in acct.parts[NOV].items()}
    assert ends == {NOV: SWITCH, SWITCH: DEC}
    assert acct.periods[NOV].end == DEC
