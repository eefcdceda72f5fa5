"""Unit limits over windows and entitlements: the pure rules (tallyray/pricing/quotas.py),
their configuration (tallyray/pricing/config.py) and the account that enforces them
(tallyray/actors/account.py).

Plan ``capped`` (USD, monthly, 0.001 per output token, so 1,000 tokens = 1.00):

- ``output_tokens`` (sum, by model): at most 1,000 a day;
- ``requests`` (count): at most 3 a week;
- ``output_tokens`` of ``gpt-4o`` only: at most 500 a (billing) period;
- feature ``models.o1`` (events with ``model: o1``) not allowed, ``models.gpt-4o`` allowed.

NOW is Tuesday 2026-11-10 12:00 UTC: its day is 11-10, its week Monday 11-09 to Monday
11-16, its period November.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.actors.account import CustomerAccount, Hold, Profile, QuotaAnswer
from tallyray.errors import ConfigError
from tallyray.pricing import parse_config
from tallyray.pricing.credits import CreditGrant
from tallyray.pricing.events import Event, parse_timestamp
from tallyray.pricing.periods import period_of
from tallyray.pricing.quotas import UnitLimit, Window, window_of

D = Decimal
T = parse_timestamp

NOW = T("2026-11-10T12:00:00Z")
MINUTE = 60 * 1_000_000
DAY = 24 * 60 * MINUTE

METERS_JSON = [
    {
        "key": "output_tokens",
        "event_type": "llm",
        "aggregation": "sum",
        "value": "output_tokens",
        "group_by": ["model"],
    },
    {"key": "requests", "event_type": "llm", "aggregation": "count"},
    {"key": "seats", "event_type": "seat", "aggregation": "unique_count", "value": "user"},
]

CAPPED: dict[str, Any] = {
    "key": "capped",
    "currency": "USD",
    "interval": "month",
    "charges": [{"meter": "output_tokens", "model": "per_unit", "unit_amount": "0.001"}],
    "limits": [
        {"meter": "output_tokens", "limit": 1000, "window": "day"},
        {"meter": "requests", "limit": 3, "window": "week"},
        {
            "meter": "output_tokens",
            "limit": "500",
            "window": "period",
            "groups": {"model": "gpt-4o"},
        },
    ],
    "entitlements": [
        {"feature": "models.o1", "match": {"model": "o1"}, "allowed": False},
        {"feature": "models.gpt-4o", "match": {"model": "gpt-4o"}, "allowed": True},
    ],
}

CONFIG = parse_config({"meters": METERS_JSON, "plans": [CAPPED]})

_ids = iter(range(10**9))


def call(tokens: int, model: str = "mini", ts: int = NOW) -> Event:
    return Event(f"e{next(_ids)}", "cust", "llm", ts, {"model": model, "output_tokens": tokens})


def account(credits: str = "100") -> CustomerAccount:
    acct = CustomerAccount(Profile("cust", "USD", CONFIG.plan("capped")), CONFIG.meters)
    acct.add_grant(CreditGrant.new("g", D(credits), "USD", created_at=0))
    return acct


# -- windows ----------------------------------------------------------------------------------


def _calendar(ts: int) -> Any:
    return period_of(ts, "month")


@pytest.mark.parametrize(
    ("moment", "window", "start", "end"),
    [
        ("2026-11-10T12:00:00Z", "day", "2026-11-10T00:00:00Z", "2026-11-11T00:00:00Z"),
        ("2026-11-10T00:00:00Z", "day", "2026-11-10T00:00:00Z", "2026-11-11T00:00:00Z"),
        ("2026-11-09T23:59:59.999999Z", "day", "2026-11-09T00:00:00Z", "2026-11-10T00:00:00Z"),
        # a UTC day, whatever offset the moment was written in: 01:00+02:00 is 23:00 UTC
        ("2026-11-10T01:00:00+02:00", "day", "2026-11-09T00:00:00Z", "2026-11-10T00:00:00Z"),
        # ISO weeks: Monday 00:00 UTC to the next Monday
        ("2026-11-10T12:00:00Z", "week", "2026-11-09T00:00:00Z", "2026-11-16T00:00:00Z"),
        ("2026-11-15T23:59:59Z", "week", "2026-11-09T00:00:00Z", "2026-11-16T00:00:00Z"),
        ("2026-11-16T00:00:00Z", "week", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),
        ("2027-01-01T08:00:00Z", "week", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"),
        ("1970-01-01T00:00:00Z", "week", "1969-12-29T00:00:00Z", "1970-01-05T00:00:00Z"),
        ("2026-12-31T23:59:59Z", "month", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("2028-02-29T10:00:00Z", "month", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        # the billing period: calendar here
        ("2026-11-10T12:00:00Z", "period", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ],
)
def test_windows_are_utc(moment: str, window: Window, start: str, end: str) -> None:
    assert window_of(T(moment), window, _calendar) == (T(start), T(end))


def test_a_period_window_follows_an_anniversary_subscription() -> None:
    anchor = T("2026-10-15T09:30:00Z")  # periods from the 15th, 09:30
    found = window_of(NOW, "period", lambda ts: period_of(ts, "month", anchor))
    assert found == (T("2026-10-15T09:30:00Z"), T("2026-11-15T09:30:00Z"))


# -- configuration ----------------------------------------------------------------------------


def test_a_plan_reads_its_limits_and_entitlements() -> None:
    plan = CONFIG.plan("capped")
    assert [(lim.key, lim.limit) for lim in plan.limits] == [
        ("output_tokens/day", D(1000)),
        ("requests/week", D(3)),
        ("output_tokens/period[model=gpt-4o]", D(500)),
    ]
    assert [(e.feature, e.allowed) for e in plan.entitlements] == [
        ("models.o1", False),
        ("models.gpt-4o", True),
    ]


def _with(**fields: Any) -> dict[str, Any]:
    return {**CAPPED, "limits": [], "entitlements": [], **fields}


@pytest.mark.parametrize(
    ("plan", "where", "message"),
    [
        (
            _with(limits={"meter": "requests"}),
            "plans[0].limits",
            "must be a list of unit limits, not an object",
        ),
        (
            _with(limits=[{"meter": "tokens", "limit": 1, "window": "day"}]),
            "plans[0].limits[0].meter",
            "unknown meter 'tokens' (meters: output_tokens, requests, seats)",
        ),
        (
            _with(limits=[{"meter": "seats", "limit": 1, "window": "day"}]),
            "plans[0].limits[0].meter",
            "meter 'seats' is a unique_count meter; a unit limit counts what events add, "
            "so it needs a sum or count meter",
        ),
        (
            _with(limits=[{"meter": "requests", "window": "day"}]),
            "plans[0].limits[0].limit",
            "is required: the most units per window, e.g. 1000000",
        ),
        (
            _with(limits=[{"meter": "requests", "limit": 0, "window": "day"}]),
            "plans[0].limits[0].limit",
            "must be greater than zero, not 0",
        ),
        (
            _with(limits=[{"meter": "requests", "limit": 5, "window": "hour"}]),
            "plans[0].limits[0].window",
            "must be one of day, week, month, period, not 'hour'",
        ),
        (
            _with(limits=[{"meter": "requests", "limit": 5, "window": "day", "per": "x"}]),
            "plans[0].limits[0].per",
            "unknown field (known: groups, limit, meter, window)",
        ),
        (
            _with(
                limits=[
                    {"meter": "requests", "limit": 5, "window": "day", "groups": {"model": "x"}}
                ]
            ),
            "plans[0].limits[0].groups.model",
            "a unit limit can only narrow to its meter's group_by properties; add 'model' to "
            "meter 'requests''s group_by",
        ),
        (
            _with(
                limits=[
                    {"meter": "requests", "limit": 5, "window": "day"},
                    {"meter": "requests", "limit": 9, "window": "day"},
                ]
            ),
            "plans[0].limits[1]",
            "limits requests per day again: plans[0].limits[0] does already",
        ),
        (
            _with(entitlements=[{"feature": "models.o1", "match": {"model": "o1"}}]),
            "plans[0].entitlements[0].allowed",
            "must be true or false, not None",
        ),
        (
            _with(entitlements=[{"feature": "f", "match": {"model": "o1"}, "allowed": "no"}]),
            "plans[0].entitlements[0].allowed",
            "must be true or false, not 'no'",
        ),
        (
            _with(entitlements=[{"feature": "f", "match": {}, "allowed": False}]),
            "plans[0].entitlements[0].match",
            'must name the event properties the feature covers, e.g. {"model": "gpt-4o"}',
        ),
        (
            _with(entitlements=[{"feature": "f", "allowed": False}]),
            "plans[0].entitlements[0].match",
            'is required, e.g. {"model": "gpt-4o"}',
        ),
        (
            _with(entitlements=[{"feature": "a b", "match": {"model": "x"}, "allowed": False}]),
            "plans[0].entitlements[0].feature",
            "must be 1–64 letters, digits, '_', '.', ':' or '-', not 'a b'",
        ),
        (
            _with(
                entitlements=[
                    {"feature": "f", "match": {"model": "x"}, "allowed": False},
                    {"feature": "f", "match": {"model": "y"}, "allowed": True},
                ]
            ),
            "plans[0].entitlements[1].feature",
            "'f' is already used by plans[0].entitlements[0]",
        ),
    ],
)
def test_bad_limits_and_entitlements_are_named(plan: Any, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"meters": METERS_JSON, "plans": [plan]})
    assert [(p.where, p.message) for p in caught.value.problems] == [(where, message)]


# -- checks ------------------------------------------------------------------------------------


def test_a_check_within_every_limit_is_allowed() -> None:
    acct = account()
    acct.apply([call(900)], NOW)
    answer = acct.check([call(100)], NOW)  # 900 + 100 = 1,000: at the limit, not past it
    assert (answer.allowed, answer.refusal, answer.limit) == (True, None, None)


def test_a_check_past_a_day_limit_names_it() -> None:
    acct = account()
    acct.apply([call(900)], NOW)
    answer = acct.check([call(101)], NOW)  # 900 + 101 = 1,001 > 1,000
    assert not answer.allowed
    assert answer.refusal == "unit_limit"
    assert answer.cost == D("0.101")  # 101 × 0.001
    assert answer.available == D("99.1")  # 100 − 900 × 0.001
    assert answer.reason == (
        "unit limit of 1,000 output_tokens per day reached: 900 used, this adds 101 "
        "(the window resets at 2026-11-11T00:00:00Z)"
    )
    assert answer.limit is not None
    assert answer.limit.to_json() == {
        "meter": "output_tokens",
        "window": "day",
        "limit": "1000",
        "used": "900",
        "window_start": "2026-11-10T00:00:00Z",
        "resets_at": "2026-11-11T00:00:00Z",
    }


@pytest.mark.parametrize(
    ("used_at", "checked_at", "allowed"),
    [
        (NOW, NOW, False),  # 900 + 200 in one day
        (NOW - 12 * 60 * MINUTE, NOW, False),  # 00:00 the same day
        (NOW - 12 * 60 * MINUTE - 1, NOW, True),  # the microsecond before: the day before
        (NOW, NOW + 12 * 60 * MINUTE - 1, False),  # the last microsecond of the day
        (NOW, NOW + 12 * 60 * MINUTE, True),  # midnight: a new window
    ],
)
def test_the_day_window_rolls_over_at_midnight_utc(
    used_at: int, checked_at: int, allowed: bool
) -> None:
    acct = account()
    acct.apply([call(900, ts=used_at)], used_at)
    answer = acct.check([call(200, ts=checked_at)], checked_at)
    assert answer.allowed is allowed
    assert answer.refusal == (None if allowed else "unit_limit")


def test_a_week_limit_counts_requests_from_monday() -> None:
    acct = account()
    sunday = T("2026-11-08T23:00:00Z")  # the week before: does not count
    acct.apply([call(1, ts=sunday), call(1, ts=sunday)], sunday)
    monday = T("2026-11-09T09:00:00Z")
    acct.apply([call(1, ts=monday), call(1, ts=monday), call(1, ts=monday)], monday)
    answer = acct.check([call(1)], NOW)  # 3 this week + 1 > 3
    assert answer.refusal == "unit_limit"
    assert answer.reason == (
        "unit limit of 3 requests per week reached: 3 used, this adds 1 "
        "(the window resets at 2026-11-16T00:00:00Z)"
    )
    next_monday = T("2026-11-16T00:00:00Z")
    assert acct.check([call(1, ts=next_monday)], next_monday).allowed


def test_a_period_limit_counts_only_its_groups() -> None:
    acct = account()
    acct.apply([call(450, "gpt-4o", ts=NOW - DAY)], NOW - DAY)  # yesterday: the day is new
    gpt = acct.check([call(60, "gpt-4o")], NOW)  # 450 + 60 = 510 > 500 gpt-4o this period
    assert gpt.refusal == "unit_limit"
    assert gpt.limit is not None
    assert (gpt.limit.limit.key, gpt.limit.used) == ("output_tokens/period[model=gpt-4o]", 450)
    assert gpt.reason == (
        "unit limit of 500 output_tokens (model=gpt-4o) per period reached: 450 used, this "
        "adds 60 (the window resets at 2026-12-01T00:00:00Z)"
    )
    assert acct.check([call(60, "mini")], NOW).allowed  # not counted by the gpt-4o limit


def test_usage_a_limit_does_not_count_is_not_refused_at_the_limit() -> None:
    acct = account()
    acct.apply([call(1000)], NOW)  # the day limit is reached
    assert acct.check([call(0)], NOW).allowed  # adds no output tokens (one request of 3)


def test_a_feature_the_plan_leaves_out_is_refused_whatever_the_credit() -> None:
    acct = account()
    answer = acct.check([call(1, "mini"), call(1, "o1")], NOW)
    assert answer == QuotaAnswer(
        False,
        D("0.002"),
        D("100"),
        "the plan does not include feature 'models.o1'",
        "USD",
        "entitlement",
        feature="models.o1",
    )
    assert acct.check([call(1, "gpt-4o")], NOW).allowed  # allowed: true


@pytest.mark.parametrize(
    ("credits", "limit", "cap", "refusal"),
    [
        ("0.50", None, None, "credit"),
        ("100", "0.50", None, "credit_limit"),
        ("100", "5.00", "0.50", "spend_cap"),
    ],
)
def test_money_refusals_say_which_limit(
    credits: str, limit: str | None, cap: str | None, refusal: str
) -> None:
    acct = CustomerAccount(
        Profile(
            "cust",
            "USD",
            CONFIG.plan("capped"),
            credit_limit=None if limit is None else D(limit),
            spend_cap=None if cap is None else D(cap),
        ),
        CONFIG.meters,
    )
    acct.add_grant(CreditGrant.new("g", D(credits), "USD", created_at=0))
    answer = acct.check([call(900)], NOW)  # 900 × 0.001 = 0.90 > 0.50
    assert (answer.allowed, answer.refusal, answer.limit, answer.feature) == (
        False,
        refusal,
        None,
        None,
    )


# -- holds ---------------------------------------------------------------------------------


def hold(id: str, tokens: int, acct: CustomerAccount, ttl: int = MINUTE) -> QuotaAnswer:
    events = [call(tokens)]
    units = acct.units_of(events)
    return acct.place_hold(Hold(id, acct.price(events), NOW + ttl, units), NOW, events=events)


def test_holds_carry_units_so_reservations_never_pass_a_limit() -> None:
    acct = account()
    acct.apply([call(300)], NOW)
    assert hold("h1", 400, acct).allowed  # 300 + 400 = 700
    second = hold("h2", 400, acct)  # 700 + 400 = 1,100 > 1,000
    assert second.refusal == "unit_limit" and "h2" not in acct.holds
    assert second.limit is not None and second.limit.used == 700  # 300 used + 400 held
    assert acct.check([call(301)], NOW).refusal == "unit_limit"  # a check counts held units
    assert acct.check([call(300)], NOW).allowed
    acct.release("h1")
    assert hold("h2", 400, acct).allowed  # 300 + 400


def test_an_expired_hold_gives_its_units_back() -> None:
    acct = account()
    assert hold("h1", 1000, acct, ttl=MINUTE).allowed
    assert acct.units_held(NOW) == {"output_tokens/day": D(1000), "requests/week": D(1)}
    assert not acct.check([call(1)], NOW).allowed
    assert acct.check([call(1)], NOW + MINUTE).allowed  # expired at NOW + MINUTE
    assert acct.units_held(NOW + MINUTE) == {}


def test_a_hold_refused_by_a_feature_is_not_placed() -> None:
    acct = account()
    events = [call(1, "o1")]
    answer = acct.place_hold(Hold("h", D("0.001"), NOW + MINUTE), NOW, events=events)
    assert (answer.allowed, answer.refusal, answer.feature) == (False, "entitlement", "models.o1")
    assert acct.holds == {}


def test_settling_turns_held_units_into_used_ones() -> None:
    acct = account()
    assert hold("h1", 800, acct).allowed
    acct.release("h1")
    acct.apply([call(700)], NOW)  # what the call really used
    use = acct.plan_limits(NOW)["limits"][0]
    assert (use["used"], use["held"], use["remaining"]) == ("700", "0", "300")


# -- the balance and the checkpoint ------------------------------------------------------------


def test_the_balance_shows_each_limit_and_feature() -> None:
    acct = account()
    acct.apply([call(250, "gpt-4o"), call(100)], NOW)
    assert hold("h1", 50, acct).allowed
    assert acct.balance(NOW)["limits"] == [
        {
            "meter": "output_tokens",
            "window": "day",
            "limit": "1000",
            "used": "350",  # 250 + 100
            "held": "50",
            "remaining": "600",  # 1,000 − 350 − 50
            "window_start": "2026-11-10T00:00:00Z",
            "resets_at": "2026-11-11T00:00:00Z",
        },
        {
            "meter": "requests",
            "window": "week",
            "limit": "3",
            "used": "2",
            "held": "1",
            "remaining": "0",
            "window_start": "2026-11-09T00:00:00Z",
            "resets_at": "2026-11-16T00:00:00Z",
        },
        {
            "meter": "output_tokens",
            "window": "period",
            "limit": "500",
            "groups": {"model": ["gpt-4o"]},
            "used": "250",
            "held": "0",  # the hold is on mini
            "remaining": "250",
            "window_start": "2026-11-01T00:00:00Z",
            "resets_at": "2026-12-01T00:00:00Z",
        },
    ]
    assert acct.balance(NOW)["entitlements"] == [
        {"feature": "models.o1", "allowed": False},
        {"feature": "models.gpt-4o", "allowed": True},
    ]


def test_window_units_survive_a_checkpoint() -> None:
    acct = account()
    acct.apply([call(600, ts=NOW - DAY)], NOW - DAY)
    acct.apply([call(900)], NOW)
    snapshot = acct.snapshot()
    assert snapshot["units"] == {
        "output_tokens/day": {
            str(T("2026-11-09T00:00:00Z")): "600",
            str(T("2026-11-10T00:00:00Z")): "900",
        },
        "requests/week": {str(T("2026-11-09T00:00:00Z")): "2"},  # Monday and Tuesday
    }
    restored = CustomerAccount.restore(snapshot, acct.profile, CONFIG.meters, NOW)
    assert restored.window_units == acct.window_units
    assert restored.check([call(101)], NOW).refusal == "unit_limit"


def test_a_plan_without_limits_keeps_no_window_units() -> None:
    plain = parse_config({"meters": METERS_JSON, "plans": [_with()]})
    acct = CustomerAccount(Profile("cust", "USD", plain.plan("capped")), plain.meters)
    acct.apply([call(5000)], NOW)
    assert acct.window_units == {}
    assert "units" not in acct.snapshot()
    assert acct.balance(NOW)["limits"] == []


def test_closing_periods_forgets_the_windows_that_ended_before_them() -> None:
    acct = account()
    october = T("2026-10-20T10:00:00Z")
    acct.apply([call(10, ts=october)], october)
    acct.apply([call(20)], NOW)
    acct.drop_periods([T("2026-10-01T00:00:00Z")])
    # the October day and week ended before November: forgotten
    assert acct.window_units == {
        "output_tokens/day": {T("2026-11-10T00:00:00Z"): D(20)},
        "requests/week": {T("2026-11-09T00:00:00Z"): D(1)},
    }


def test_a_limit_key_names_its_meter_window_and_groups() -> None:
    limit = UnitLimit(
        "t", D(1), "month", {"model": frozenset({"b", "a"}), "region": frozenset({"eu"})}
    )
    assert limit.key == "t/month[model=a|b, region=eu]"


def test_the_api_schema_lists_every_refusal() -> None:
    from typing import get_args

    from tallyray.actors.account import Refusal
    from tallyray.serve.schemas import QuotaAnswer as Schema

    shown = Schema.model_json_schema()["properties"]["refusal"]["anyOf"][0]["enum"]
    assert shown == list(get_args(Refusal))
