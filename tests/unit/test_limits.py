"""Caps on one customer's state (tallyray/actors/limits.py), as the pure account applies them:
active holds, groups per meter and period, ``unique_count`` values per meter and period.

Meters here (all on events of type ``llm``):

- ``tokens``: sum of ``tokens`` by ``model``;
- ``users``: distinct ``user`` values (no groups);
- ``gpt``: sum of ``tokens`` by ``region``, only for ``model: gpt``.

The caps in these tests: 2 holds, 3 groups per meter, 4 distinct values.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tallyray.actors.account import CustomerAccount, Hold, Profile
from tallyray.actors.limits import Limits
from tallyray.errors import Conflict
from tallyray.pricing import parse_config
from tallyray.pricing.events import Event, parse_timestamp

NOW = parse_timestamp("2026-11-10T12:00:00Z")
LAST_MONTH = parse_timestamp("2026-10-20T12:00:00Z")
HOUR = 3600 * 1_000_000
LIMITS = Limits(holds_per_customer=2, groups_per_meter=3, unique_values=4)

CONFIG = parse_config(
    {
        "meters": [
            {
                "key": "tokens",
                "event_type": "llm",
                "aggregation": "sum",
                "value": "tokens",
                "group_by": ["model"],
            },
            {"key": "users", "event_type": "llm", "aggregation": "unique_count", "value": "user"},
            {
                "key": "gpt",
                "event_type": "llm",
                "aggregation": "sum",
                "value": "tokens",
                "group_by": ["region"],
                "filter": {"model": ["gpt"]},
            },
        ],
        "plans": [
            {
                "key": "basic",
                "currency": "USD",
                "interval": "month",
                "charges": [{"meter": "tokens", "model": "per_unit", "unit_amount": "0.01"}],
            }
        ],
    }
)

_ids = iter(range(10**9))


def llm(model: str = "m1", user: str = "u1", region: str = "eu", ts: int = NOW) -> Event:
    return Event(
        f"e{next(_ids)}",
        "cust",
        "llm",
        ts,
        {"model": model, "user": user, "region": region, "tokens": 10},
    )


def account(*recorded: Event) -> CustomerAccount:
    acct = CustomerAccount(Profile("cust", "USD", CONFIG.plan("basic")), CONFIG.meters)
    acct.record(list(recorded), NOW)
    return acct


def where(problems: list[Any]) -> list[str]:
    return [p.where for p in problems]


# -- limits are whole numbers -----------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "10"])
def test_a_limit_is_a_whole_number_of_at_least_one(value: Any) -> None:
    with pytest.raises(ValueError, match="groups_per_meter"):
        Limits(groups_per_meter=value)


def test_the_defaults() -> None:
    assert Limits() == Limits(1_000, 100, 10_000, 100_000)


# -- groups per meter and period --------------------------------------------------------------

GROUP_CASES = [
    # held: m1, m2 (2 of 3). m3 starts the third group; m4 would start a fourth.
    pytest.param([llm("m1"), llm("m2")], [llm("m3"), llm("m4")], [], ["[1]"], id="the-fourth"),
    # a group the account holds, or that the batch started already, costs nothing more
    pytest.param(
        [llm("m1"), llm("m2"), llm("m3")], [llm("m1"), llm("m3")], [], [], id="known-groups"
    ),
    pytest.param([llm("m1")], [llm("m2"), llm("m2"), llm("m3"), llm("m2")], [], [], id="repeats"),
    # every event past the cap is named, and a refused group stays refused
    pytest.param(
        [llm("m1"), llm("m2"), llm("m3")],
        [llm("m4"), llm("m1"), llm("m5"), llm("m4")],
        [],
        ["[0]", "[2]", "[3]"],
        id="each-named",
    ),
    # accepted but not yet recorded (in the commit being written): counts, never refused
    pytest.param([llm("m1")], [llm("m4")], [llm("m2"), llm("m3")], ["[0]"], id="pending-count"),
    # periods are counted apart: October's groups leave November's alone
    pytest.param(
        [llm("m1", ts=LAST_MONTH), llm("m2", ts=LAST_MONTH), llm("m3", ts=LAST_MONTH)],
        [llm("m4"), llm("m5", ts=LAST_MONTH)],
        [],
        ["[1]"],
        id="per-period",
    ),
    # the filtered meter counts only gpt events: 3 regions of gpt, then a 4th region refused
    # for meter gpt only (a non-gpt event in a new region is not counted there)
    pytest.param(
        [llm("gpt", region=r) for r in ("eu", "us", "ap")],
        [llm("m1", region="sa"), llm("gpt", region="sa")],
        [],
        ["[1]"],
        id="filtered-meter",
    ),
]


@pytest.mark.parametrize(("recorded", "batch", "pending", "refused"), GROUP_CASES)
def test_groups_past_the_cap_are_refused(
    recorded: list[Event], batch: list[Event], pending: list[Event], refused: list[str]
) -> None:
    assert where(account(*recorded).over_limits(batch, LIMITS, pending)) == refused


def test_the_message_names_the_meter_and_the_cap() -> None:
    acct = account(llm("m1"), llm("m2"), llm("m3"))
    (problem,) = acct.over_limits([llm("m1"), llm("m9")], LIMITS, label=lambda i: f"[{i + 7}]")
    assert problem.where == "[8]"
    assert problem.message == (
        "meter 'tokens' already has 3 groups (by model) for this customer in this billing "
        "period, the most it may have; this event would start another "
        "(TALLYRAY_MAX_GROUPS_PER_METER)"
    )


# -- distinct values of a unique_count meter --------------------------------------------------

VALUE_CASES = [
    # held: u1..u3 (3 of 4). u4 is the fourth; u5 would be a fifth; u1 again is nothing new.
    pytest.param(
        ["u1", "u2", "u3"], ["u4", "u1", "u5", "u4", "u6"], ["[2]", "[4]"], id="the-fifth"
    ),
    pytest.param(["u1", "u2", "u3", "u4"], ["u4", "u1", "u2"], [], id="known-values"),
    pytest.param([], ["u1", "u2", "u1", "u3", "u4", "u5"], ["[5]"], id="within-the-batch"),
]


@pytest.mark.parametrize(("held", "batch", "refused"), VALUE_CASES)
def test_values_past_the_cap_are_refused(
    held: list[str], batch: list[str], refused: list[str]
) -> None:
    acct = account(*(llm(user=u) for u in held))
    assert where(acct.over_limits([llm(user=u) for u in batch], LIMITS)) == refused


def test_the_values_message_names_the_meter_and_the_cap() -> None:
    acct = account(*(llm(user=f"u{i}") for i in range(4)))
    (problem,) = acct.over_limits([llm(user="new")], LIMITS)
    assert problem.message == (
        "meter 'users' already counts 4 distinct values for this customer in this billing "
        "period, the most it may hold; this event would add another (TALLYRAY_MAX_UNIQUE_VALUES)"
    )


def test_an_event_refused_for_its_value_does_not_start_its_group() -> None:
    """Refused means refused whole: m2 is not counted as a group because the event that would
    have started it was refused for its user."""
    acct = account(llm("m1", user="u1"), llm("m1", user="u2"), llm("m1", user="u3"))
    acct.record([llm("m1", user="u4")], NOW)
    batch = [llm("m2", user="u5"), llm("m3", user="u1"), llm("m4", user="u1")]
    # u5 would be a fifth value; then m3 is the second group and m4 the third (had m2 been
    # counted, m4 would have been a fourth)
    assert where(acct.over_limits(batch, LIMITS)) == ["[0]"]


# -- the cheap test first ---------------------------------------------------------------------

NEAR_CASES = [
    # (groups held, values held, events to add, near?)  cap: 3 groups, 4 values
    pytest.param(["m1"], ["u1"], 2, False, id="room-for-all"),  # 1 + 2 ≤ 3, 1 + 2 ≤ 4
    pytest.param(["m1"], ["u1"], 3, True, id="could-start-a-fourth-group"),  # 1 + 3 > 3
    pytest.param(["m1"], ["u1", "u2", "u3"], 2, True, id="could-add-a-fifth-value"),
    pytest.param([], [], 0, False, id="nothing"),
]


@pytest.mark.parametrize(("models", "users", "adding", "near"), NEAR_CASES)
def test_only_accounts_near_a_cap_get_a_closer_look(
    models: list[str], users: list[str], adding: int, near: bool
) -> None:
    events = [llm(models[i % len(models)], user=u) for i, u in enumerate(users)]
    acct = account(*events)
    assert acct.near_limits(adding, LIMITS) is near


def test_crowding_counts_per_meter_and_period() -> None:
    acct = account(llm("m1", user="a"), llm("m2", user="b"), llm("m2", user="c", ts=LAST_MONTH))
    assert acct.crowding() == (2, 2)  # November: 2 models, 2 users; October: 1 and 1


# -- active holds -----------------------------------------------------------------------------

HOLD_CASES = [
    # (holds held: (amount, expires in hours), allowed?)  cap: 2 holds
    pytest.param([], True, id="none"),
    pytest.param([("1", 1)], True, id="one"),
    pytest.param([("1", 1), ("0", 1)], False, id="two-one-of-them-free"),  # zero-cost counts
    pytest.param([("1", 1), ("1", -1)], True, id="one-expired"),  # expired ones do not
]


@pytest.mark.parametrize(("held", "allowed"), HOLD_CASES)
def test_a_hold_past_the_cap_is_a_conflict(held: list[tuple[str, int]], allowed: bool) -> None:
    acct = account()
    for n, (amount, hours) in enumerate(held):
        acct.holds[f"h{n}"] = Hold(f"h{n}", Decimal(amount), NOW + hours * HOUR)
    hold = Hold("new", Decimal(0), NOW + HOUR)
    if allowed:
        assert acct.place_hold(hold, NOW, LIMITS.holds_per_customer).allowed
        assert "new" in acct.holds
    else:
        with pytest.raises(Conflict) as caught:
            acct.place_hold(hold, NOW, LIMITS.holds_per_customer)
        assert caught.value.message == (
            "customer 'cust' has 2 active holds, the most one customer may have (2); settle "
            "or release some (POST /v1/reservations/{id}/settle or /release) before "
            "reserving more"
        )
        assert "new" not in acct.holds


# -- what an event leaves behind --------------------------------------------------------------


def test_footprint_names_each_meter_group_and_value() -> None:
    found = CONFIG.meters.footprint(llm("gpt", user="ana", region="us"))
    assert [(m.key, g, v) for m, g, v in found] == [
        ("tokens", ("gpt",), None),
        ("users", (), "ana"),
        ("gpt", ("us",), None),
    ]
    assert [m.key for m, _, _ in CONFIG.meters.footprint(llm("m1"))] == ["tokens", "users"]


def test_crowding_kept_up_to_date_equals_crowding_worked_out_afresh() -> None:
    acct = account(llm("m1", user="a"))
    assert acct.crowding() == (1, 1)  # from here on, recording keeps it up to date
    acct.record([llm("m2", user="b"), llm("m3", user="b")], NOW)
    acct.record([llm("m1", user=u, ts=LAST_MONTH) for u in ("c", "e", "f", "g")], NOW)
    acct.record([llm("gpt", user="d", region=r) for r in ("eu", "us")], NOW)
    fresh = account()
    fresh.periods = acct.periods
    # November: models m1 m2 m3 gpt, users a b d; October: model m1, users c e f g
    assert acct.crowding() == fresh.crowding() == (4, 4)
    acct.drop_periods([min(acct.periods)])
    assert acct.crowding() == (4, 3)  # October gone: worked out again
