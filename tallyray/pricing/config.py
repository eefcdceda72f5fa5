"""Meters, plans and settings from JSON (``tallyray.json`` or the API), validated.

Every problem is collected with the JSON path where it is (``plans[0].charges[1].tiers[2]``),
so one run of ``tallyray check-config`` shows them all. Nothing here reads files: the caller
decodes the JSON and hands over the objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tallyray.errors import ConfigError, CurrencyError, InvalidInput, Problem
from tallyray.pricing.alert_rules import rule_problems
from tallyray.pricing.meters import AGGREGATIONS, WEIGHT_UNITS, Filter, MeterSet, MeterSpec
from tallyray.pricing.models import (
    MODELS,
    ChargeModel,
    Dynamic,
    Graduated,
    Package,
    Percentage,
    PerUnit,
    Tier,
    Volume,
)
from tallyray.pricing.money import DEFAULT_ROUNDING, ROUNDING_MODES, currency, parse_amount
from tallyray.pricing.plans import INTERVALS, Charge, Plan, per_event_sums
from tallyray.pricing.quotas import LIMIT_AGGREGATIONS, WINDOWS, Entitlement, UnitLimit
from tallyray.pricing.unpriced import DEFAULT_UNPRICED, UNPRICED_MODES, is_mode

__all__ = ["PricingConfig", "parse_config", "parse_meter", "parse_plan"]

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

#: ``invoicing`` and ``tax`` are read by :mod:`tallyray.invoicing`, which validates them.
TOP_LEVEL_FIELDS = frozenset({"meters", "plans", "rounding", "customers", "invoicing", "tax"})


@dataclass(frozen=True)
class PricingConfig:
    meters: MeterSet
    plans: Mapping[str, Plan]
    rounding: str = DEFAULT_ROUNDING
    raw: Mapping[str, Any] = field(default_factory=dict)

    def plan(self, key: str) -> Plan:
        try:
            return self.plans[key]
        except KeyError:
            known = ", ".join(sorted(self.plans)) or "none"
            raise InvalidInput(f"no plan {key!r} in the configuration (plans: {known})") from None


class _Reader:
    """Collects problems while walking a JSON document."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def bad(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def obj(self, value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.bad(where, f"must be a JSON object, not {_kind(value)}")
            return None
        for name in sorted(set(value) - allowed):
            at = f"{where}.{name}" if where else name
            self.bad(at, f"unknown field (known: {', '.join(sorted(allowed))})")
        return value

    def key(self, obj: Mapping[str, Any], where: str, name: str = "key") -> str | None:
        value = obj.get(name)
        if not isinstance(value, str) or not _KEY.match(value):
            self.bad(
                f"{where}.{name}",
                f"must be 1–64 letters, digits, '_', '.', ':' or '-', not {value!r}",
            )
            return None
        return value

    def text(
        self, obj: Mapping[str, Any], where: str, name: str, required: bool = True
    ) -> str | None:
        value = obj.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            self.bad(f"{where}.{name}", f"must be a non-empty string, not {value!r}")
            return None
        return value

    def amount(
        self,
        obj: Mapping[str, Any],
        where: str,
        name: str,
        *,
        required: bool = True,
        default: Decimal | None = None,
        places: int = 12,
    ) -> Decimal | None:
        if name not in obj or obj[name] is None:
            if required:
                self.bad(f"{where}.{name}", 'is required: a decimal string such as "0.10"')
            return default
        try:
            value = parse_amount(obj[name], places=places)
        except InvalidInput as error:
            self.bad(f"{where}.{name}", error.message)
            return None
        if value < 0:
            self.bad(f"{where}.{name}", "must not be negative (use credits for discounts)")
            return None
        return value

    def quantity(self, value: Any, where: str) -> Decimal | None:
        """A positive quantity bound: a whole JSON number or a decimal string."""
        try:
            result = parse_amount(value)
        except InvalidInput as error:
            self.bad(where, error.message)
            return None
        if result <= 0:
            self.bad(where, f"must be greater than zero, not {value!r}")
            return None
        return result


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Meters


_METER_FIELDS = frozenset(
    {
        "key",
        "name",
        "description",
        "event_type",
        "aggregation",
        "value",
        "filter",
        "group_by",
        "allow_negative",
        "unit",
    }
)


def _filter(r: _Reader, raw: Any, where: str) -> Filter:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.bad(where, f"must be an object of property → value(s), not {_kind(raw)}")
        return {}
    result: dict[str, frozenset[Any]] = {}
    for name, wanted in raw.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or any(isinstance(v, dict | list | float) for v in values):
            r.bad(
                f"{where}.{name}",
                "must be a string, integer or boolean, or a non-empty list of them",
            )
            continue
        result[name] = frozenset(values)
    return result


def _meter(r: _Reader, raw: Any, where: str) -> MeterSpec | None:
    obj = r.obj(raw, where, _METER_FIELDS)
    if obj is None:
        return None
    before = len(r.problems)
    key = r.key(obj, where)
    event_type = r.text(obj, where, "event_type")
    aggregation = obj.get("aggregation")
    if aggregation not in AGGREGATIONS:
        r.bad(
            f"{where}.aggregation", f"must be one of {', '.join(AGGREGATIONS)}, not {aggregation!r}"
        )
    value = obj.get("value")
    path: tuple[str, ...] | None = None
    if aggregation == "count":
        if value is not None:
            r.bad(f"{where}.value", "a count meter counts events and takes no value")
    elif aggregation in AGGREGATIONS:
        if not isinstance(value, str) or not value or any(not part for part in value.split(".")):
            r.bad(f"{where}.value", f'a {aggregation} meter needs a property path such as "tokens"')
        else:
            path = tuple(value.split("."))
    group_by = obj.get("group_by", [])
    if not isinstance(group_by, list) or not all(isinstance(g, str) and g for g in group_by):
        r.bad(f"{where}.group_by", "must be a list of property names")
        group_by = []
    elif len(set(group_by)) != len(group_by):
        r.bad(f"{where}.group_by", "names a property twice")
    flt = _filter(r, obj.get("filter"), f"{where}.filter")
    allow_negative = obj.get("allow_negative", False)
    if not isinstance(allow_negative, bool):
        r.bad(f"{where}.allow_negative", "must be true or false")
    elif allow_negative and aggregation in ("count", "unique_count"):
        r.bad(f"{where}.allow_negative", f"a {aggregation} meter has no values to be negative")
    unit = obj.get("unit")
    units = ", ".join(WEIGHT_UNITS)
    if aggregation == "weighted_sum" and unit not in WEIGHT_UNITS:
        r.bad(
            f"{where}.unit",
            f"a weighted_sum meter needs the unit of time its value is held in: one of {units}, "
            f"not {unit!r}",
        )
    elif aggregation != "weighted_sum" and unit is not None:
        r.bad(f"{where}.unit", "only a weighted_sum meter takes a unit of time")
    if len(r.problems) > before:
        return None
    assert key is not None and event_type is not None
    return MeterSpec(
        key,
        event_type,
        str(aggregation),
        path,
        flt,
        tuple(group_by),
        allow_negative is True,
        unit if isinstance(unit, str) else None,
    )


def parse_meter(raw: Any) -> MeterSpec:
    """One meter from JSON, or :class:`ConfigError`."""
    r = _Reader()
    meter = _meter(r, raw, "meter")
    if meter is None:
        raise ConfigError.of(r.problems)
    return meter


# ---------------------------------------------------------------------------------------------
# Plans and charges


_PLAN_FIELDS = frozenset(
    {
        "key",
        "name",
        "description",
        "currency",
        "interval",
        "base_fee",
        "minimum",
        "charges",
        "alerts",
        "unpriced",
    }
) | frozenset({"limits", "entitlements"})
_CHARGE_COMMON = frozenset({"meter", "model", "filter", "description"})
_MODEL_FIELDS: Mapping[str, frozenset[str]] = {
    "per_unit": frozenset({"unit_amount"}),
    "package": frozenset({"package_size", "package_amount"}),
    "graduated": frozenset({"tiers"}),
    "volume": frozenset({"tiers"}),
    "percentage": frozenset({"percent", "minimum", "maximum"}),
    "dynamic": frozenset(),
}
#: Models priced from a value the events carry: their meter must be a ``sum`` of that value.
_VALUE_MODELS = {
    "percentage": "the value it takes a percentage of (the provider's cost, say)",
    "dynamic": "the price each event carries",
}
_TIER_FIELDS = frozenset({"up_to", "unit_amount", "flat_amount"})


def _tiers(r: _Reader, raw: Any, where: str) -> tuple[Tier, ...] | None:
    if not isinstance(raw, list) or not raw:
        r.bad(where, 'must be a non-empty list of tiers; the last one has "up_to": null')
        return None
    before = len(r.problems)
    tiers: list[Tier] = []
    previous: Decimal | None = None
    for i, raw_tier in enumerate(raw):
        at = f"{where}[{i}]"
        obj = r.obj(raw_tier, at, _TIER_FIELDS)
        if obj is None:
            continue
        last = i == len(raw) - 1
        up_to: Decimal | None = None
        if "up_to" not in obj:
            r.bad(f"{at}.up_to", "is required: a quantity, or null on the last tier")
        elif obj["up_to"] is None:
            if not last:
                r.bad(f"{at}.up_to", "only the last tier may be unbounded (null)")
        else:
            up_to = r.quantity(obj["up_to"], f"{at}.up_to")
            if last and up_to is not None:
                r.bad(f"{at}.up_to", 'the last tier must have "up_to": null (no upper bound)')
            if up_to is not None and previous is not None and up_to <= previous:
                r.bad(
                    f"{at}.up_to",
                    f"tiers must rise: {format(up_to, 'f')} is not above the previous "
                    f"tier's {format(previous, 'f')}",
                )
            if up_to is not None:
                previous = up_to
        unit = r.amount(obj, at, "unit_amount")
        flat = r.amount(obj, at, "flat_amount", required=False, default=Decimal(0))
        if unit is not None and flat is not None:
            tiers.append(Tier(up_to, unit, flat))
    if len(r.problems) > before:
        return None
    return tuple(tiers)


def _percentage(r: _Reader, obj: Mapping[str, Any], where: str) -> Percentage | None:
    """``{"percent": "20", "minimum"?: "0.01", "maximum"?: "2.00"}``: the bounds are per event,
    in the plan's currency, with up to 12 decimal places (an event may cost a fraction of a
    cent)."""
    before = len(r.problems)
    written = obj.get("percent")
    if isinstance(written, str) and written.strip().endswith("%"):
        r.bad(f"{where}.percent", f'must be a number without "%": "20" for 20 %, not {written!r}')
        percent = None
    else:
        percent = r.amount(obj, where, "percent")
    low = r.amount(obj, where, "minimum", required=False)
    high = r.amount(obj, where, "maximum", required=False)
    if low is not None and high is not None and low > high:
        r.bad(
            f"{where}.maximum",
            f"the most an event is charged ({format(high, 'f')}) is below the least "
            f"({format(low, 'f')}): raise maximum or lower minimum",
        )
    if percent is None or len(r.problems) > before:
        return None
    return Percentage(percent, low, high)


def _model(r: _Reader, name: str, obj: Mapping[str, Any], where: str) -> ChargeModel | None:
    if name == "percentage":
        return _percentage(r, obj, where)
    if name == "dynamic":
        return Dynamic()
    if name == "per_unit":
        unit = r.amount(obj, where, "unit_amount")
        return None if unit is None else PerUnit(unit)
    if name == "package":
        size = r.quantity(obj.get("package_size"), f"{where}.package_size")
        if size is not None and size != size.to_integral_value():
            r.bad(f"{where}.package_size", "must be a whole number of units")
            size = None
        amount = r.amount(obj, where, "package_amount")
        return None if size is None or amount is None else Package(size, amount)
    tiers = _tiers(r, obj.get("tiers"), f"{where}.tiers")
    if tiers is None:
        return None
    return Graduated(tiers) if name == "graduated" else Volume(tiers)


def _charge(
    r: _Reader,
    raw: Any,
    where: str,
    meters: Mapping[str, MeterSpec],
    broken: frozenset[Any] = frozenset(),
) -> Charge | None:
    if not isinstance(raw, dict):
        r.bad(where, f"must be a JSON object, not {_kind(raw)}")
        return None
    model_name = raw.get("model")
    if not isinstance(model_name, str) or model_name not in MODELS:
        r.bad(f"{where}.model", f"unknown charge model {model_name!r}; known: {', '.join(MODELS)}")
        return None
    assert isinstance(model_name, str)
    obj = r.obj(raw, where, _CHARGE_COMMON | _MODEL_FIELDS[model_name])
    if obj is None:
        return None
    before = len(r.problems)
    meter_key = obj.get("meter")
    meter = meters.get(meter_key) if isinstance(meter_key, str) else None
    if meter is None and not (isinstance(meter_key, str) and meter_key in broken):
        known = ", ".join(sorted(meters)) or "none defined"
        r.bad(f"{where}.meter", f"unknown meter {meter_key!r} (meters: {known})")
    elif meter is None:  # declared, but invalid: its own problems are reported already
        r.bad(f"{where}.meter", f"meter {meter_key!r} is invalid (see its problems)")
    flt = _filter(r, obj.get("filter"), f"{where}.filter")
    if meter is not None:
        for name in sorted(set(flt) - set(meter.group_by)):
            r.bad(
                f"{where}.filter.{name}",
                f"a charge can only filter on its meter's group_by properties; add {name!r} "
                f"to meter {meter.key!r}'s group_by",
            )
    if meter is not None and model_name in _VALUE_MODELS and meter.aggregation != "sum":
        r.bad(
            f"{where}.meter",
            f"a {model_name} charge needs a sum meter over {_VALUE_MODELS[model_name]}; "
            f"meter {meter.key!r} is a {meter.aggregation} meter",
        )
    clamped = model_name == "percentage" and any(
        obj.get(bound) is not None for bound in ("minimum", "maximum")
    )
    if meter is not None and clamped and meter.allow_negative:
        r.bad(
            f"{where}.meter",
            f"meter {meter.key!r} takes negative values, and a per-event minimum or maximum "
            "has no meaning for a correction: use a meter without allow_negative",
        )
    description = r.text(obj, where, "description", required=False)
    model = _model(r, model_name, obj, where)
    if model is None or len(r.problems) > before:
        return None
    assert isinstance(meter_key, str)
    return Charge(meter_key, model, model_name, flt, description)


def _plan(
    r: _Reader,
    raw: Any,
    where: str,
    meters: Mapping[str, MeterSpec],
    broken: frozenset[Any] = frozenset(),
) -> Plan | None:
    obj = r.obj(raw, where, _PLAN_FIELDS)
    if obj is None:
        return None
    before = len(r.problems)
    key = r.key(obj, where)
    name = r.text(obj, where, "name", required=False) or key or ""
    cur = None
    code = obj.get("currency")
    try:
        if not isinstance(code, str):
            raise CurrencyError(f"must be an ISO 4217 code such as 'EUR', not {code!r}")
        cur = currency(code)
    except CurrencyError as error:
        r.bad(f"{where}.currency", error.message)
    interval = obj.get("interval")
    if interval not in INTERVALS:
        r.bad(f"{where}.interval", f"must be one of {', '.join(INTERVALS)}, not {interval!r}")
    places = cur.minor_units if cur else 12
    base_fee = r.amount(obj, where, "base_fee", required=False, default=Decimal(0), places=places)
    minimum = r.amount(obj, where, "minimum", required=False, places=places)
    raw_charges = obj.get("charges", [])
    charges: list[Charge] = []
    if not isinstance(raw_charges, list):
        r.bad(f"{where}.charges", f"must be a list of charges, not {_kind(raw_charges)}")
    else:
        for i, raw_charge in enumerate(raw_charges):
            charge = _charge(r, raw_charge, f"{where}.charges[{i}]", meters, broken)
            if charge is not None:
                charges.append(charge)
    _alerts(r, obj.get("alerts", []), f"{where}.alerts", meters)
    limits = _unit_limits(r, obj.get("limits", []), f"{where}.limits", meters)
    entitlements = _entitlements(r, obj.get("entitlements", []), f"{where}.entitlements")
    unpriced = obj.get("unpriced", DEFAULT_UNPRICED)
    if not is_mode(unpriced):
        r.bad(
            f"{where}.unpriced",
            f"must be one of {', '.join(UNPRICED_MODES)} (what an event that no charge "
            f"prices gets), not {unpriced!r}",
        )
    if len(r.problems) > before:
        return None
    assert key is not None and cur is not None and base_fee is not None and is_mode(unpriced)
    return Plan(
        key,
        name,
        cur,
        str(interval),
        base_fee,
        minimum,
        tuple(charges),
        limits=limits,
        entitlements=entitlements,
        unpriced=unpriced,
    )


_LIMIT_FIELDS = frozenset({"meter", "limit", "window", "groups"})
_ENTITLEMENT_FIELDS = frozenset({"feature", "match", "allowed"})


def _objects(
    r: _Reader, raw: Any, where: str, what: str, fields: frozenset[str]
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The objects of a list field (index, JSON path, object); what is not one is reported."""
    if not isinstance(raw, list):
        r.bad(where, f"must be a list of {what}, not {_kind(raw)}")
        return
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        obj = r.obj(item, here, fields)
        if obj is not None:
            yield i, here, obj


def _unit_limits(
    r: _Reader, raw: Any, where: str, meters: Mapping[str, MeterSpec]
) -> tuple[UnitLimit, ...]:
    """A plan's usage limits in units: ``[{"meter", "limit", "window", "groups"?}]``."""
    limits: list[UnitLimit] = []
    seen: dict[str, int] = {}
    for i, here, obj in _objects(r, raw, where, "unit limits", _LIMIT_FIELDS):
        before = len(r.problems)
        meter_key = obj.get("meter")
        meter = meters.get(meter_key) if isinstance(meter_key, str) else None
        if meter is None:
            known = ", ".join(sorted(meters)) or "none defined"
            r.bad(f"{here}.meter", f"unknown meter {meter_key!r} (meters: {known})")
        elif meter.aggregation not in LIMIT_AGGREGATIONS:
            r.bad(
                f"{here}.meter",
                f"meter {meter.key!r} is a {meter.aggregation} meter; a unit limit counts "
                f"what events add, so it needs a {' or '.join(LIMIT_AGGREGATIONS)} meter",
            )
        limit = r.quantity(obj.get("limit"), f"{here}.limit") if "limit" in obj else None
        if "limit" not in obj:
            r.bad(f"{here}.limit", "is required: the most units per window, e.g. 1000000")
        window = obj.get("window")
        if window not in WINDOWS:
            r.bad(f"{here}.window", f"must be one of {', '.join(WINDOWS)}, not {window!r}")
        groups = _filter(r, obj.get("groups"), f"{here}.groups")
        if meter is not None:
            for name in sorted(set(groups) - set(meter.group_by)):
                r.bad(
                    f"{here}.groups.{name}",
                    f"a unit limit can only narrow to its meter's group_by properties; add "
                    f"{name!r} to meter {meter.key!r}'s group_by",
                )
        if len(r.problems) > before:
            continue
        assert isinstance(meter_key, str) and limit is not None and window in WINDOWS
        unit_limit = UnitLimit(meter_key, limit, window, groups)
        if unit_limit.key in seen:
            r.bad(
                here,
                f"limits {unit_limit.describe()} per {window} again: "
                f"{where}[{seen[unit_limit.key]}] does already",
            )
            continue
        seen[unit_limit.key] = i
        limits.append(unit_limit)
    return tuple(limits)


def _entitlements(r: _Reader, raw: Any, where: str) -> tuple[Entitlement, ...]:
    """A plan's features: ``[{"feature", "match", "allowed"}]``."""
    found: list[Entitlement] = []
    seen: dict[str, int] = {}
    for i, here, obj in _objects(r, raw, where, "entitlements", _ENTITLEMENT_FIELDS):
        before = len(r.problems)
        feature = r.key(obj, here, "feature")
        if feature is not None and feature in seen:
            r.bad(f"{here}.feature", f"{feature!r} is already used by {where}[{seen[feature]}]")
        match = obj.get("match")
        flt = _filter(r, match, f"{here}.match")
        if isinstance(match, dict) and not match:
            r.bad(
                f"{here}.match",
                'must name the event properties the feature covers, e.g. {"model": "gpt-4o"}',
            )
        elif match is None:
            r.bad(f"{here}.match", 'is required, e.g. {"model": "gpt-4o"}')
        allowed = obj.get("allowed")
        if not isinstance(allowed, bool):
            r.bad(f"{here}.allowed", f"must be true or false, not {allowed!r}")
        if len(r.problems) > before:
            continue
        assert feature is not None and isinstance(allowed, bool)
        seen[feature] = i
        found.append(Entitlement(feature, flt, allowed))
    return tuple(found)


def _alerts(r: _Reader, raw: Any, where: str, meters: Mapping[str, MeterSpec]) -> None:
    """A plan's default alert rules: ``[{"kind", "threshold", "meter"?, "name"?}]``, checked
    by the one rule validator the API and the portal use too."""
    if not isinstance(raw, list):
        r.bad(where, f"must be a list of alert rules, not {_kind(raw)}")
        return
    for i, rule in enumerate(raw):
        here = f"{where}[{i}]"
        for problem in rule_problems(rule, meters):
            r.bad(f"{here}.{problem.where}" if problem.where else here, problem.message)


def parse_plan(raw: Any, meters: Mapping[str, MeterSpec]) -> Plan:
    """One plan from JSON against known meters, or :class:`ConfigError`."""
    r = _Reader()
    plan = _plan(r, raw, "plan", meters)
    if plan is None:
        raise ConfigError.of(r.problems)
    return plan


# ---------------------------------------------------------------------------------------------
# The whole file


def _rounding(r: _Reader, raw: Any) -> str:
    if raw is None:
        return DEFAULT_ROUNDING
    name = raw.upper() if isinstance(raw, str) else None
    if name is not None and not name.startswith("ROUND_"):
        name = f"ROUND_{name}"
    if name not in ROUNDING_MODES:
        modes = ", ".join(sorted(m.removeprefix("ROUND_").lower() for m in ROUNDING_MODES))
        r.bad("rounding", f"unknown rounding mode {raw!r}; use one of {modes}")
        return DEFAULT_ROUNDING
    return str(name)


def _unique(r: _Reader, items: Sequence[Any], where: str, key_of: Callable[[Any], object]) -> None:
    seen: dict[object, int] = {}
    for i, item in enumerate(items):
        key = key_of(item)
        if key is None:
            continue
        if key in seen:
            r.bad(f"{where}[{i}].key", f"{key!r} is already used by {where}[{seen[key]}]")
        seen[key] = i


def _key_of(item: Any) -> str | None:
    """An object's ``key`` if it is a string (anything else is reported by its parser)."""
    key = item.get("key") if isinstance(item, dict) else None
    return key if isinstance(key, str) else None


def parse_config(raw: Any) -> PricingConfig:
    """A whole configuration document, or :class:`ConfigError` listing every problem."""
    r = _Reader()
    doc = r.obj(raw, "", TOP_LEVEL_FIELDS)
    if doc is None:
        raise ConfigError.of(r.problems)
    rounding = _rounding(r, doc.get("rounding"))

    raw_meters = doc.get("meters", [])
    meters: dict[str, MeterSpec] = {}
    if not isinstance(raw_meters, list):
        r.bad("meters", f"must be a list of meters, not {_kind(raw_meters)}")
        raw_meters = []
    _unique(r, raw_meters, "meters", _key_of)
    for i, raw_meter in enumerate(raw_meters):
        meter = _meter(r, raw_meter, f"meters[{i}]")
        if meter is not None:
            meters.setdefault(meter.key, meter)
    broken = frozenset(filter(None, map(_key_of, raw_meters))) - set(meters)

    raw_plans = doc.get("plans", [])
    plans: dict[str, Plan] = {}
    if not isinstance(raw_plans, list):
        r.bad("plans", f"must be a list of plans, not {_kind(raw_plans)}")
        raw_plans = []
    _unique(r, raw_plans, "plans", _key_of)
    for i, raw_plan in enumerate(raw_plans):
        plan = _plan(r, raw_plan, f"plans[{i}]", meters, broken)
        if plan is not None:
            plans.setdefault(plan.key, plan)
    if r.problems:
        raise ConfigError.of(r.problems)
    meter_set = MeterSet(meters.values(), per_event_sums(plans.values()))
    return PricingConfig(meter_set, plans, rounding, doc)
