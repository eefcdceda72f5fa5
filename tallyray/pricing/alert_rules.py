"""Alert rules: the one parser and validator, for plan defaults, the API and the portal. Pure.

A rule watches one value of a customer's account against a threshold:

================================  ===========================================  ==============
kind                              value                                        crossed when
================================  ===========================================  ==============
``balance_below``                 what may still be spent (``available``)      value < X
``spend_above``                   this period's spend                          value > X
``usage_above``                   a meter's quantity this period               value > N
``credits_used_percent``          % of the active grants' credit used          value >= X
================================  ===========================================  ==============

Every place that takes a rule from outside (a plan's ``"alerts"`` in ``tallyray.json`` or
``POST /v1/plans``, ``POST /v1/customers/{id}/alert-rules``, the portal's form) goes through
:func:`rule_problems`, so one bad rule is refused everywhere with the same message (before,
a plan's ``credits_used_percent`` rule at ``"150"`` passed the plan check and was then
dropped by the shard without a word).

Each kind is handled by a ``match`` that ends in :func:`~typing.assert_never`: a new kind
cannot quietly take another kind's path.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeGuard, assert_never, get_args

from tallyray.errors import InvalidInput, Problem
from tallyray.pricing.money import parse_amount

__all__ = [
    "HYSTERESIS",
    "MAX_NAME",
    "RULE_FIELDS",
    "RULE_KINDS",
    "AlertKind",
    "AlertRule",
    "RuleSource",
    "is_kind",
    "parse_rule",
    "plan_rules",
    "rule_problems",
    "unusable_plan_rules",
]

AlertKind = Literal["balance_below", "spend_above", "usage_above", "credits_used_percent"]
RULE_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)
RuleSource = Literal["customer", "plan", "recharge"]
"""``customer``: set over the API or in the portal; ``plan``: a plan's default; ``recharge``:
the trigger of the customer's auto-recharge (:mod:`tallyray.pricing.recharge_rules`)."""

RULE_FIELDS = frozenset({"kind", "threshold", "meter", "name"})
MAX_NAME = 200
"""The longest name a rule may have."""
HYSTERESIS = Decimal("0.05")
"""A triggered rule recovers once its value is back across the threshold by this share of
the threshold (so a value hovering at the line does not flap)."""
ZERO = Decimal(0)
HUNDRED = Decimal(100)


def is_kind(value: object) -> TypeGuard[AlertKind]:
    return value in RULE_KINDS


@dataclass(frozen=True, slots=True)
class AlertRule:
    id: str
    kind: AlertKind
    threshold: Decimal
    meter: str | None = None
    name: str | None = None
    source: RuleSource = "customer"

    def describe(self) -> str:
        if self.name:
            return self.name
        value = format(self.threshold, "f")
        match self.kind:
            case "balance_below":
                return f"available balance below {value}"
            case "spend_above":
                return f"period spend above {value}"
            case "usage_above":
                return f"{self.meter} usage above {value}"
            case "credits_used_percent":
                return f"credits used at {value}%"
            case _:
                assert_never(self.kind)

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
        match self.kind:
            case "balance_below":
                return value < self.threshold
            case "credits_used_percent":
                return value >= self.threshold
            case "spend_above" | "usage_above":
                return value > self.threshold
            case _:
                assert_never(self.kind)

    def recovered(self, value: Decimal) -> bool:
        band = abs(self.threshold) * HYSTERESIS
        match self.kind:
            case "balance_below":
                return value >= self.threshold + band
            case "spend_above" | "usage_above" | "credits_used_percent":
                return value < self.threshold - band
            case _:
                assert_never(self.kind)


def _threshold_problem(kind: AlertKind, threshold: Decimal) -> str | None:
    """What is wrong with a (well-formed) threshold for this kind of rule."""
    match kind:
        case "balance_below":
            return None  # an overdraft makes a negative balance a value worth watching
        case "spend_above":
            return "must not be negative: a period's spend starts at 0" if threshold < 0 else None
        case "usage_above":
            return "must not be negative: a meter's usage starts at 0" if threshold < 0 else None
        case "credits_used_percent":
            if not ZERO < threshold <= HUNDRED:
                return (
                    f"is a percentage of the credit used, from 0 to 100 (above 0), not "
                    f"{format(threshold, 'f')}"
                )
            return None
        case _:
            assert_never(kind)


def _meter_problem(kind: AlertKind, meter: object, meters: Collection[str]) -> str | None:
    match kind:
        case "usage_above":
            if not isinstance(meter, str) or meter not in meters:
                known = ", ".join(sorted(meters)) or "none defined"
                return f"must name a meter for a usage_above rule (meters: {known})"
            return None
        case "balance_below" | "spend_above" | "credits_used_percent":
            if meter is not None:
                return f"only usage_above rules name a meter, not {kind}"
            return None
        case _:
            assert_never(kind)


def rule_problems(doc: Any, meters: Collection[str]) -> list[Problem]:
    """Every problem with one rule's JSON (``{"kind", "threshold", "meter"?, "name"?}``),
    each named by its field (``threshold``); empty when the rule is good. ``meters``: the
    meter keys a ``usage_above`` rule may name."""
    if not isinstance(doc, dict):
        return [Problem("", 'an alert rule is a JSON object: {"kind", "threshold", ...}')]
    problems = [
        Problem(name, f"unknown field (known: {', '.join(sorted(RULE_FIELDS))})")
        for name in sorted(set(doc) - RULE_FIELDS, key=str)
    ]
    kind = doc.get("kind")
    if not is_kind(kind):
        problems.append(Problem("kind", f"must be one of {', '.join(RULE_KINDS)}, not {kind!r}"))
    threshold: Decimal | None = None
    if "threshold" not in doc:
        problems.append(Problem("threshold", 'is required: a decimal string such as "50"'))
    else:
        try:
            threshold = parse_amount(doc["threshold"])
        except InvalidInput as error:
            problems.append(Problem("threshold", error.message))
    if is_kind(kind):
        if threshold is not None:
            why = _threshold_problem(kind, threshold)
            if why is not None:
                problems.append(Problem("threshold", why))
        why = _meter_problem(kind, doc.get("meter"), meters)
        if why is not None:
            problems.append(Problem("meter", why))
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or not name or len(name) > MAX_NAME):
        problems.append(Problem("name", f"must be a string of 1 to {MAX_NAME} characters"))
    return problems


def parse_rule(
    doc: Any, meters: Collection[str], rule_id: str, source: RuleSource = "customer"
) -> AlertRule:
    """A rule from its JSON, or :class:`InvalidInput` (422) naming each bad field."""
    problems = rule_problems(doc, meters)
    if problems:
        raise InvalidInput("the alert rule has problems", problems)
    kind = doc["kind"]
    assert is_kind(kind)
    return AlertRule(
        rule_id,
        kind,
        parse_amount(doc["threshold"]),
        doc.get("meter"),
        doc.get("name"),
        source,
    )


def plan_rules(plan_key: str, raw: Any, meters: Collection[str] | None = None) -> list[AlertRule]:
    """A stored plan's default rules (its ``"alerts"``), with ids stable across restarts.

    Plans are checked with :func:`rule_problems` when they are stored, so every rule of a
    plan stored since parses; ``meters=None`` trusts the meter names (checked then too).
    A rule that does not parse (a plan stored before the checks were one) is left out:
    :func:`unusable_plan_rules` names them so the caller can say so."""
    if not isinstance(raw, list):
        return []
    rules = []
    for index, doc in enumerate(raw):
        known = _meters_for(doc, meters)
        if not rule_problems(doc, known):
            rules.append(parse_rule(doc, known, f"plan-{plan_key}-{index}", source="plan"))
    return rules


def unusable_plan_rules(raw: Any, meters: Collection[str] | None = None) -> list[Problem]:
    """The problems of a stored plan's rules that :func:`plan_rules` leaves out, each named
    ``alerts[i].field``."""
    if not isinstance(raw, list):
        return [Problem("alerts", "must be a list of alert rules")]
    return [
        Problem(f"alerts[{index}].{p.where}" if p.where else f"alerts[{index}]", p.message)
        for index, doc in enumerate(raw)
        for p in rule_problems(doc, _meters_for(doc, meters))
    ]


def _meters_for(doc: Any, meters: Collection[str] | None) -> Collection[str]:
    if meters is not None:
        return meters
    meter = doc.get("meter") if isinstance(doc, dict) else None
    return [meter] if isinstance(meter, str) else []
