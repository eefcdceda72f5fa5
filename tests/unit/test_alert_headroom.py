"""Skipping alert evaluations that cannot fire: the spend bound and the account's headroom.

An account that left every rule quiet skips later evaluations while an upper bound on the
spend folded in since stays below its headroom. The property that matters: the firings are
exactly those of evaluating after every commit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallyray.actors.account import CustomerAccount, Profile
from tallyray.actors.alerting import AlertRule
from tallyray.pricing import parse_config
from tallyray.pricing.bounds import spend_bound
from tallyray.pricing.credits import CreditGrant
from tallyray.pricing.events import Event, parse_timestamp

D = Decimal
NOW = parse_timestamp("2026-11-10T12:00:00Z")
HOUR = 3600 * 1_000_000

# negative token counts (corrections) give credit back: a case the headroom must handle
TOKENS = {
    "key": "tokens",
    "event_type": "llm",
    "aggregation": "sum",
    "value": "tokens",
    "allow_negative": True,
}
CALLS = {"key": "calls", "event_type": "llm", "aggregation": "count"}
PEAK = {
    "key": "peak",
    "event_type": "llm",
    "aggregation": "max",
    "value": "tokens",
    "allow_negative": True,
}
SEATS = {"key": "seats", "event_type": "seat", "aggregation": "unique_count", "value": "user"}
GRADUATED = [
    {"up_to": 1000, "unit_amount": "0.002"},
    {"up_to": None, "unit_amount": "0.001"},
]

GRADUATED_FLAT = [
    {"up_to": 1000, "unit_amount": "0.002"},
    {"up_to": None, "unit_amount": "0.001", "flat_amount": "0.5"},
]


def _config(charges: list[dict[str, Any]], corrections: bool = True) -> Any:
    """``corrections``: token counts may be negative (and the shard prices such usage at once,
    as it can lower the cost)."""
    tokens = TOKENS if corrections else {**TOKENS, "allow_negative": False}
    peak = PEAK if corrections else {**PEAK, "allow_negative": False}
    return parse_config(
        {
            "meters": [tokens, CALLS, peak, SEATS],
            "plans": [{"key": "p", "currency": "USD", "interval": "month", "charges": charges}],
        }
    )


def _bound(*charges: dict[str, Any]) -> dict[str, tuple[str, str] | None]:
    config = _config(list(charges))
    found = spend_bound(config.plan("p"), config.meters.meters)
    return {
        k: None if b is None else (format(b[0].normalize(), "f"), format(b[1], "f"))
        for k, b in found.rates.items()
    }


@pytest.mark.parametrize(
    ("charges", "bound"),
    [
        # per_unit: the unit price, nothing per fold
        (
            [{"meter": "tokens", "model": "per_unit", "unit_amount": "0.01"}],
            {"tokens": ("0.01", "0")},
        ),
        # graduated without flat amounts: the dearest tier
        (
            [{"meter": "tokens", "model": "graduated", "tiers": GRADUATED}],
            {"tokens": ("0.002", "0")},
        ),
        # package of 100 for 2: 0.02 per unit plus one package per fold (ceil)
        (
            [{"meter": "calls", "model": "package", "package_size": 100, "package_amount": "2"}],
            {"calls": ("0.02", "2")},
        ),
        # two charges on one meter add up
        (
            [
                {"meter": "tokens", "model": "per_unit", "unit_amount": "0.01"},
                {"meter": "tokens", "model": "per_unit", "unit_amount": "0.03"},
            ],
            {"tokens": ("0.04", "0")},
        ),
        # volume: crossing a tier re-prices every unit, no linear bound
        ([{"meter": "tokens", "model": "volume", "tiers": GRADUATED}], {"tokens": None}),
        # ... which leaves the other meters bounded
        (
            [
                {"meter": "tokens", "model": "volume", "tiers": GRADUATED},
                {"meter": "calls", "model": "per_unit", "unit_amount": "0.1"},
            ],
            {"tokens": None, "calls": ("0.1", "0")},
        ),
        # a max meter does not add quantities up
        ([{"meter": "peak", "model": "per_unit", "unit_amount": "1"}], {"peak": None}),
    ],
)
def test_spend_bound_per_model(charges: list[dict[str, Any]], bound: Any) -> None:
    assert _bound(*charges) == bound


# --- the property: skipping never changes what fires ----------------------------------------

CHARGES = [
    {"meter": "tokens", "model": "graduated", "tiers": GRADUATED_FLAT},
    {"meter": "calls", "model": "package", "package_size": 10, "package_amount": "0.05"},
    {"meter": "seats", "model": "volume", "tiers": [{"up_to": None, "unit_amount": "0.7"}]},
]
CONFIG = _config(CHARGES)
MONOTONE = _config(CHARGES, corrections=False)
"""Token usage only ever raises the cost: its commits wait to be priced."""
RULES = (
    AlertRule("spend", "spend_above", D("1.5")),
    AlertRule("low", "balance_below", D("2")),
    AlertRule("used", "credits_used_percent", D("50")),
)

_ids = iter(range(10**9))


def _account(rules: tuple[AlertRule, ...], fx: str | None, config: Any = CONFIG) -> CustomerAccount:
    profile = Profile(
        "cust", "USD", config.plan("p"), "prepaid", D("1"), None, fx_rate=fx and D(fx)
    )
    account = CustomerAccount(profile, config.meters)
    account.rules = rules
    return account


def _events(sizes: list[int], at: int) -> list[Event]:
    return [Event(f"e{next(_ids)}", "cust", "llm", at, {"tokens": n}) for n in sizes]


step = st.one_of(
    st.tuples(st.just("events"), st.lists(st.integers(-50, 900), min_size=1, max_size=4)),
    st.tuples(st.just("seat"), st.integers(0, 5)),
    st.tuples(st.just("grant"), st.integers(1, 5)),
    st.tuples(st.just("hold"), st.integers(0, 3)),
    st.tuples(st.just("wait"), st.integers(1, 48)),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(step, min_size=1, max_size=40),
    rules=st.sampled_from([(), RULES[:1], RULES[1:2], RULES[2:], RULES]),
    fx=st.sampled_from([None, "0.9"]),
    first=st.integers(1, 8),
    expiry_hours=st.one_of(st.none(), st.integers(1, 200)),
)
def test_skipping_quiet_evaluations_fires_exactly_what_evaluating_every_commit_fires(
    steps: list[tuple[str, int]],
    rules: tuple[AlertRule, ...],
    fx: str | None,
    first: int,
    expiry_hours: int | None,
) -> None:
    skipping, always = _account(rules, fx), _account(rules, fx)
    expires = None if expiry_hours is None else NOW + expiry_hours * HOUR
    for acct in (skipping, always):
        acct.add_grant(CreditGrant.new("g0", D(first), "USD", expires_at=expires, created_at=NOW))
    at = NOW
    for n, (kind, arg) in enumerate(steps):
        at += HOUR // 4
        events = []
        if kind == "events":
            events = _events([int(a) for a in arg], at)  # type: ignore[union-attr]
        elif kind == "seat":
            events = [Event(f"s{n}", "cust", "seat", at, {"user": f"u{arg}"})]
        for acct in (skipping, always):
            if events:
                acct.record(events, at)
            elif kind == "grant":
                acct.add_grant(CreditGrant.new(f"g{n}", D(arg), "USD", created_at=at))
            elif kind == "hold":
                acct.expire_holds(at)
                acct.holds.clear()
                if arg:
                    acct.place_hold(_hold(f"h{n}", arg, at), at)
        if kind == "wait":
            at += arg * HOUR
        always._quiet = None  # never skip
        assert skipping.evaluate_alerts(at, "k") == always.evaluate_alerts(at, "k")
        assert skipping.alert_state.get("depleted") == always.alert_state.get("depleted")


def _hold(hold_id: str, amount: int, at: int) -> Any:
    from tallyray.actors.account import Hold

    return Hold(hold_id, D(amount), at + HOUR)


def test_a_quiet_account_skips_pricing_until_its_headroom_could_be_used_up() -> None:
    account = _account((), None, MONOTONE)
    account.add_grant(CreditGrant.new("g", D("10"), "USD", created_at=NOW))
    account.record(_events([100], NOW), NOW)
    assert account.evaluate_alerts(NOW, "k") == []  # priced: 100 × 0.002 + 0.05 = 0.25
    assert account.ledger.remaining(NOW) == D("9.75")

    # Bound: 800 × 0.002 + 1 × 0.005 + 0.05 ≈ 1.66, far below 9.75: nothing is priced.
    account.record(_events([800], NOW + 1), NOW + 1)
    assert account.evaluate_alerts(NOW + 1, "k") == []
    assert account.ledger.remaining(NOW) == D("9.75")

    # Enough to use up the credit left: evaluated, priced, and credits.depleted fires.
    # 11,700 tokens: 1,000 × 0.002 + 10,700 × 0.001 = 12.70; 14 calls: 2 packages, 0.10.
    account.record(_events([900] * 12, NOW + 2), NOW + 2)
    fired = account.evaluate_alerts(NOW + 2, "k")
    assert [f.type for f in fired] == ["credits.depleted"]
    assert account.ledger.remaining(NOW + 2) == D("0")
