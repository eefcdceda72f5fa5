"""Spend alerts: rules, their state, and which crossings a change of the account makes. Pure.

The rules themselves (kinds, thresholds, parsing) live in :mod:`tallyray.pricing.alert_rules`.

Each rule fires ``alert.triggered`` once per crossing per period, and ``alert.recovered`` when
the value goes back across the threshold by more than the hysteresis band (5% of the
threshold), so a value hovering at the line does not flap. A period's start resets every rule.
``credits.depleted`` fires when the credit left reaches zero.

The auto-recharge trigger (a ``balance_below`` rule of source ``recharge``,
:mod:`tallyray.pricing.recharge_rules`) is kept apart: its state survives a new period, it
re-arms exactly at the threshold (no band: a recharge's grant lifts the balance over it) and
its crossing is a ``recharge.requested`` named by a counter that only grows.

The state is part of the account's checkpoint, and every firing has a deterministic id (rule,
period, crossing number, direction): a shard replaying its log makes the same firings with
the same ids, which the outbox stores once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tallyray.pricing.alert_rules import RULE_KINDS, AlertRule, parse_rule, plan_rules
from tallyray.pricing.recharge_rules import RECHARGE_REQUESTED, crossing_id

__all__ = ["RULE_KINDS", "AlertRule", "Firing", "crossings", "parse_rule", "plan_rules"]

DEPLETED = "credits.depleted"
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Firing:
    """An alert to announce: its outbox id, webhook event type and payload."""

    id: str
    type: str
    payload: Mapping[str, Any]


def crossings(
    rules: Sequence[AlertRule],
    values: Mapping[str, Decimal | None],
    state: dict[str, Any],
    period: int,
    key: str,
    describe: Mapping[str, Any],
) -> list[Firing]:
    """Compare each rule's value with its threshold, move ``state`` along (in place) and
    return what fired.

    ``values`` maps each rule id (and ``credits.depleted``) to the value it watches now
    (``None``: not applicable, such as a balance with no limit); ``key`` makes the ids unique
    across environments and customers; ``describe`` goes into every payload (customer,
    currency, ...)."""
    fired: list[Firing] = []
    if state.get("period") != period:
        kept = state.get("recharge")
        state.clear()
        state["period"] = period
        if kept is not None:
            state["recharge"] = kept
    rules_state: dict[str, Any] = state.setdefault("rules", {})
    for rule in rules:
        value = values.get(rule.id)
        if value is None:
            continue
        if rule.source == "recharge":
            mine = state.setdefault("recharge", {"on": False, "n": 0})
            if not mine["on"] and value < rule.threshold:
                mine["on"], mine["n"] = True, mine["n"] + 1
                fired.append(
                    Firing(
                        crossing_id(key, mine["n"]),
                        RECHARGE_REQUESTED,
                        {
                            **describe,
                            "crossing": mine["n"],
                            "threshold": _canonical(rule.threshold),
                            "available": _canonical(value),
                        },
                    )
                )
            elif mine["on"] and value >= rule.threshold:
                mine["on"] = False
            continue
        mine = rules_state.setdefault(rule.id, {"on": False, "n": 0})
        if not mine["on"] and rule.crossed(value):
            mine["on"], mine["n"] = True, mine["n"] + 1
            fired.append(_firing("alert.triggered", rule, value, mine["n"], period, key, describe))
        elif mine["on"] and rule.recovered(value):
            mine["on"] = False
            fired.append(_firing("alert.recovered", rule, value, mine["n"], period, key, describe))
    left = values.get(DEPLETED)
    if left is not None:
        mine = state.setdefault("depleted", {"on": False, "n": 0})
        if not mine["on"] and left <= ZERO:
            mine["on"], mine["n"] = True, mine["n"] + 1
            fired.append(
                Firing(
                    f"{DEPLETED}:{key}:{period}:{mine['n']}",
                    DEPLETED,
                    {**describe, "credits_remaining": _canonical(left)},
                )
            )
        elif mine["on"] and left > ZERO:
            mine["on"] = False
    return fired


def _firing(
    kind: str,
    rule: AlertRule,
    value: Decimal,
    n: int,
    period: int,
    key: str,
    describe: Mapping[str, Any],
) -> Firing:
    direction = "triggered" if kind == "alert.triggered" else "recovered"
    return Firing(
        f"alert:{key}:{rule.id}:{period}:{n}:{direction}",
        kind,
        {
            **describe,
            "rule": rule.to_json(),
            "value": _canonical(value),
        },
    )


def _canonical(value: Decimal) -> str:
    """Equal values as equal text, however they were computed (0.000 and 0 are "0")."""
    return format(value.normalize() if value else ZERO, "f")
