"""Spend alerts: rules, their state, and which crossings a change of the account makes. Pure.

A rule watches one value of a customer's account against a threshold:

================================  ===========================================  ==============
kind                              value                                        crossed when
================================  ===========================================  ==============
``balance_below``                 what may still be spent (``available``)      value < X
``spend_above``                   this period's spend                          value > X
``usage_above``                   a meter's quantity this period               value > N
``credits_used_percent``          % of the active grants' credit used          value >= X
================================  ===========================================  ==============

Each rule fires ``alert.triggered`` once per crossing per period, and ``alert.recovered`` when
the value goes back across the threshold by more than the hysteresis band (5% of the
threshold), so a value hovering at the line does not flap. A period's start resets every rule.
``credits.depleted`` fires when the credit left reaches zero.

The state is part of the account's checkpoint, and every firing has a deterministic id (rule,
period, crossing number, direction): a shard replaying its log makes the same firings with
the same ids, which the outbox stores once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tallyray.errors import InvalidInput, Problem
from tallyray.pricing.money import parse_amount

__all__ = ["RULE_KINDS", "AlertRule", "Firing", "crossings", "parse_rule", "plan_rules"]

RULE_KINDS = ("balance_below", "spend_above", "usage_above", "credits_used_percent")
HYSTERESIS = Decimal("0.05")
DEPLETED = "credits.depleted"
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class AlertRule:
    id: str
    kind: str
    threshold: Decimal
    meter: str | None = None
    name: str | None = None
    source: str = "customer"
    """``customer`` (set over the API or in the portal) or ``plan`` (a plan's default)."""

    def describe(self) -> str:
        if self.name:
            return self.name
        what = {
            "balance_below": "available balance below",
            "spend_above": "period spend above",
            "usage_above": f"{self.meter} usage above",
            "credits_used_percent": "credits used at",
        }[self.kind]
        suffix = "%" if self.kind == "credits_used_percent" else ""
        return f"{what} {format(self.threshold, 'f')}{suffix}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "threshold": format(self.threshold, "f"),
            "meter": self.meter,
            "name": self.name,
            "source": self.source,
            "description": self.describe(),
        }

    def crossed(self, value: Decimal) -> bool:
        if self.kind == "balance_below":
            return value < self.threshold
        if self.kind == "credits_used_percent":
            return value >= self.threshold
        return value > self.threshold

    def recovered(self, value: Decimal) -> bool:
        band = abs(self.threshold) * HYSTERESIS
        if self.kind == "balance_below":
            return value >= self.threshold + band
        return value < self.threshold - band


def parse_rule(
    doc: Any, meters: Sequence[str], rule_id: str, source: str = "customer"
) -> AlertRule:
    """A rule from its JSON (``{"kind", "threshold", "meter"?, "name"?}``), or
    :class:`InvalidInput` naming each bad field."""
    if not isinstance(doc, dict):
        raise InvalidInput("an alert rule is a JSON object")
    problems = [
        Problem(k, "unknown field")
        for k in sorted(set(doc) - {"kind", "threshold", "meter", "name"})
    ]
    kind = doc.get("kind")
    if kind not in RULE_KINDS:
        problems.append(Problem("kind", f"must be one of {', '.join(RULE_KINDS)}"))
    threshold = ZERO
    try:
        threshold = parse_amount(doc.get("threshold"), field="threshold")
    except InvalidInput as error:
        problems += error.problems
    if kind == "credits_used_percent" and not ZERO < threshold <= 100:
        problems.append(Problem("threshold", "a percentage of credits used is from 0 to 100"))
    if kind in ("spend_above", "usage_above") and threshold < 0:
        problems.append(Problem("threshold", "must not be negative"))
    meter = doc.get("meter")
    if kind == "usage_above":
        if meter not in meters:
            problems.append(Problem("meter", f"must name a meter ({', '.join(sorted(meters))})"))
    elif meter is not None:
        problems.append(Problem("meter", f"only usage_above rules name a meter, not {kind}"))
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        problems.append(Problem("name", "must be a string of at most 200 characters"))
    if problems:
        raise InvalidInput("the alert rule has problems", problems)
    return AlertRule(rule_id, str(kind), threshold, meter, name, source)


def plan_rules(plan_key: str, raw: Any) -> list[AlertRule]:
    """A plan's default rules (its ``"alerts"``), with ids stable across restarts. A rule on
    a meter is checked against the meters when the plan is stored."""
    if not isinstance(raw, list):
        return []
    rules = []
    for index, doc in enumerate(raw):
        meters = [doc["meter"]] if isinstance(doc, dict) and "meter" in doc else []
        try:
            rules.append(parse_rule(doc, meters, f"plan-{plan_key}-{index}", source="plan"))
        except InvalidInput:
            continue
    return rules


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
        state.clear()
        state["period"] = period
    rules_state: dict[str, Any] = state.setdefault("rules", {})
    for rule in rules:
        value = values.get(rule.id)
        if value is None:
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
