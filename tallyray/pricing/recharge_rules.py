"""Auto-recharge: the settings, the crossing that asks for a recharge, and what to do with one
attempt's outcome. Pure: no I/O, no clock (times are passed in, unix microseconds).

A customer's settings (``enabled``, ``threshold``, ``amount``, ``monthly_cap``) become, in the
customer's shard, a ``balance_below`` trigger (:func:`trigger_rule`) evaluated with the alerts
on every commit (:mod:`tallyray.actors.alerting`). Unlike an alert, its state is not reset by a
new period and it re-arms without a hysteresis band, at ``available >= threshold``: the
crossing counter ``n`` only grows, and ``recharge:<env>:<customer>:<n>`` names one crossing for
ever. What a crossing leads to is decided here:

- :func:`charge_decision`: charge ``amount``, or skip because the month's total would pass
  ``monthly_cap`` (the full amount or nothing: a partial recharge could fall under the
  provider's or the top-up minimum, and the cap is a promise to the customer);
- :func:`after_decline`: retry after :data:`RETRY_DELAYS` (1 h, 6 h, 24 h: four attempts in
  all), then give up and turn auto-recharge off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from tallyray.errors import InvalidInput, Problem
from tallyray.pricing.alert_rules import AlertRule
from tallyray.pricing.money import currency, parse_amount

__all__ = [
    "DISABLED_DECLINED",
    "DISABLED_NO_PAYMENT_METHOD",
    "RECHARGE_DISABLED",
    "RECHARGE_FIELDS",
    "RECHARGE_RULE_ID",
    "RECHARGE_REQUESTED",
    "RETRY_DELAYS",
    "ChargeDecision",
    "RechargeSettings",
    "after_decline",
    "charge_decision",
    "crossing_id",
    "month_of",
    "parse_settings",
    "purchase_id_of",
    "trigger_rule",
]

RECHARGE_RULE_ID = "auto-recharge"
"""The id of the trigger rule among an account's rules (never a stored rule's id)."""
RECHARGE_REQUESTED = "recharge.requested"
"""What the shard's crossing is written as (into ``auto_recharges``, not the outbox)."""
RECHARGE_DISABLED = "recharge.disabled"
"""The webhook event fired when Tallyray turns a customer's auto-recharge off."""
DISABLED_DECLINED = "declined"
"""``recharge.disabled``'s ``code`` when the retry policy gave up after the last decline."""
DISABLED_NO_PAYMENT_METHOD = "no_payment_method"
"""``recharge.disabled``'s ``code`` when the customer's last saved payment method was removed:
nothing is left to charge."""
RECHARGE_FIELDS = frozenset({"enabled", "threshold", "amount", "monthly_cap"})
_HOUR = 3600 * 1_000_000
RETRY_DELAYS: tuple[int, ...] = (1 * _HOUR, 6 * _HOUR, 24 * _HOUR)
"""After the first, second and third declined attempt: wait this long (microseconds). After
the fourth, auto-recharge is turned off."""


@dataclass(frozen=True, slots=True)
class RechargeSettings:
    """One customer's auto-recharge, in the customer's currency."""

    enabled: bool
    threshold: Decimal
    amount: Decimal
    monthly_cap: Decimal
    currency: str

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "threshold": format(self.threshold, "f"),
            "amount": format(self.amount, "f"),
            "monthly_cap": format(self.monthly_cap, "f"),
            "currency": self.currency,
        }


def parse_settings(doc: Any, currency_code: str) -> RechargeSettings:
    """Settings from ``PUT /v1/customers/{id}/auto-recharge`` or the portal's form, in the
    customer's currency; :class:`InvalidInput` (422) naming every bad field."""
    if not isinstance(doc, dict):
        raise InvalidInput(
            'the body must be a JSON object: {"enabled", "threshold", "amount", "monthly_cap"}'
        )
    problems = [
        Problem(str(name), f"unknown field (known: {', '.join(sorted(RECHARGE_FIELDS))})")
        for name in sorted(set(doc) - RECHARGE_FIELDS, key=str)
    ]
    places = currency(currency_code).minor_units
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(Problem("enabled", "must be true or false"))
    values: dict[str, Decimal] = {}
    for name, sign in (
        ("threshold", "nonnegative"),
        ("amount", "positive"),
        ("monthly_cap", "positive"),
    ):
        if name not in doc:
            problems.append(
                Problem(name, f'is required: a decimal string in {currency_code}, such as "10"')
            )
            continue
        try:
            values[name] = parse_amount(doc[name], places=places, field=name, sign=sign)  # type: ignore[arg-type]
        except InvalidInput as error:
            problems.append(Problem(name, error.message))
    if "amount" in values and "monthly_cap" in values and values["monthly_cap"] < values["amount"]:
        problems.append(
            Problem(
                "monthly_cap", "must be at least the amount: otherwise no recharge fits in a month"
            )
        )
    if problems:
        raise InvalidInput("the auto-recharge settings have problems", problems)
    return RechargeSettings(
        bool(enabled), values["threshold"], values["amount"], values["monthly_cap"], currency_code
    )


def trigger_rule(settings: RechargeSettings | None) -> AlertRule | None:
    """The shard's trigger for enabled settings; ``None`` when there is nothing to watch."""
    if settings is None or not settings.enabled:
        return None
    return AlertRule(
        RECHARGE_RULE_ID, "balance_below", settings.threshold, None, "auto-recharge", "recharge"
    )


def crossing_id(key: str, n: int) -> str:
    """The one name of crossing ``n`` of the account ``key`` (``<env>:<customer>``)."""
    return f"recharge:{key}:{n}"


def purchase_id_of(crossing: str, attempt: int) -> str:
    """The credit purchase of one attempt of one crossing: the same id whoever makes it, so a
    second process (or this one after a crash) finds the first one's purchase and the
    provider sees the same idempotency key."""
    digest = hashlib.sha256(f"{crossing}\x00{attempt}".encode()).hexdigest()
    return f"pur_{digest[:24]}"


def month_of(at: int) -> str:
    """The calendar month (UTC) the monthly cap counts ``at`` in: ``"2026-12"``."""
    return datetime.fromtimestamp(at / 1_000_000, UTC).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class ChargeDecision:
    action: Literal["charge", "capped", "disabled"]
    amount: Decimal
    reason: str | None = None


def charge_decision(
    settings: RechargeSettings | None, charged_this_month: Decimal
) -> ChargeDecision:
    """Charge the set amount, unless auto-recharge is off now or the month's recharges (those
    charged or still being charged) plus this one would pass the monthly cap."""
    if settings is None or not settings.enabled:
        return ChargeDecision("disabled", Decimal(0), "auto-recharge is off")
    if charged_this_month + settings.amount > settings.monthly_cap:
        return ChargeDecision(
            "capped",
            Decimal(0),
            f"{format(charged_this_month, 'f')} {settings.currency} recharged this month; "
            f"another {format(settings.amount, 'f')} would pass the monthly cap of "
            f"{format(settings.monthly_cap, 'f')} {settings.currency}",
        )
    return ChargeDecision("charge", settings.amount)


def after_decline(attempt: int, declined_at: int) -> int | None:
    """When to try again after attempt ``attempt`` (1, 2, ...) was declined at
    ``declined_at``; ``None``: that was the last attempt, turn auto-recharge off."""
    if 1 <= attempt <= len(RETRY_DELAYS):
        return declined_at + RETRY_DELAYS[attempt - 1]
    return None


def settings_from_row(row: Mapping[str, Any]) -> RechargeSettings:
    """Stored settings (decimal text) back into their type."""
    return RechargeSettings(
        bool(row["enabled"]),
        Decimal(row["threshold"]),
        Decimal(row["amount"]),
        Decimal(row["monthly_cap"]),
        str(row["currency"]),
    )
