"""What the API answers, as frozen dataclasses. Amounts are :class:`~decimal.Decimal`, parsed
from the API's decimal strings; never ``float``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = [
    "Balance",
    "Hold",
    "QuotaCheck",
    "Rejected",
    "Release",
    "Settlement",
    "UnitLimit",
]


def _amount(raw: Any) -> Decimal | None:
    """A decimal string of the API as a Decimal; ``None`` stays ``None`` (no limit)."""
    if raw is None:
        return None
    if isinstance(raw, float):  # never produced by the API; refuse to guess
        raise TypeError(f"amount {raw!r} is a float; the API sends decimal strings")
    return Decimal(str(raw))


def _zero(raw: Any) -> Decimal:
    value = _amount(raw)
    return Decimal(0) if value is None else value


@dataclass(frozen=True, slots=True)
class UnitLimit:
    """A unit limit of the customer's plan in its current window (UTC): what refused a
    check or a hold with ``refusal == "unit_limit"``. ``used`` counts the units held by
    active reservations too."""

    meter: str
    window: str
    """``day``, ``week``, ``month`` or ``period``."""
    limit: Decimal
    used: Decimal
    resets_at: str | None = None
    window_start: str | None = None
    groups: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> UnitLimit:
        return cls(
            meter=str(body["meter"]),
            window=str(body["window"]),
            limit=_zero(body.get("limit")),
            used=_zero(body.get("used")),
            resets_at=body.get("resets_at"),
            window_start=body.get("window_start"),
            groups=body.get("groups"),
        )


def _unit_limit(raw: Any) -> UnitLimit | None:
    return UnitLimit.from_json(raw) if isinstance(raw, Mapping) else None


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """May this customer spend this? ``available`` is ``None`` for a customer without a limit.

    ``degraded`` is true when Tallyray could not be reached and the answer is the client's
    ``on_unreachable`` policy, not Tallyray's.

    ``refusal`` says what refused it (``credit``, ``credit_limit``, ``spend_cap``,
    ``unit_limit``, ``entitlement``, ``unpriced``; ``None`` when allowed or from an older
    server), with the unit ``limit`` or the ``feature`` when one of those did."""

    allowed: bool
    cost: Decimal
    available: Decimal | None
    currency: str | None
    reason: str | None
    degraded: bool = False
    request_id: str | None = None
    refusal: str | None = None
    limit: UnitLimit | None = None
    feature: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any], request_id: str | None = None) -> QuotaCheck:
        return cls(
            allowed=bool(body["allowed"]),
            cost=_zero(body.get("cost")),
            available=_amount(body.get("available")),
            currency=body.get("currency"),
            reason=body.get("reason"),
            request_id=request_id,
            refusal=body.get("refusal"),
            limit=_unit_limit(body.get("limit")),
            feature=body.get("feature"),
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation's answer: the estimated cost held until settled, released or expired.

    ``id`` is ``None`` when nothing is held: not allowed, or a degraded answer."""

    id: str | None
    customer_id: str
    allowed: bool
    amount: Decimal
    currency: str | None
    expires_at: str | None
    reason: str | None
    available: Decimal | None = None
    degraded: bool = False
    request_id: str | None = None
    refusal: str | None = None
    """What refused it (see :class:`QuotaCheck`)."""
    limit: UnitLimit | None = None
    feature: str | None = None

    @classmethod
    def from_json(
        cls, body: Mapping[str, Any], customer_id: str, request_id: str | None = None
    ) -> Hold:
        return cls(
            id=body.get("id"),
            customer_id=str(body.get("customer_id") or customer_id),
            allowed=bool(body["allowed"]),
            amount=_zero(body.get("amount")),
            currency=body.get("currency"),
            expires_at=body.get("expires_at"),
            reason=body.get("reason"),
            available=_amount(body.get("available")),
            request_id=request_id,
            refusal=body.get("refusal"),
            limit=_unit_limit(body.get("limit")),
            feature=body.get("feature"),
        )


@dataclass(frozen=True, slots=True)
class Settlement:
    """A settled reservation: the actual events ingested (repeats as duplicates) and the hold
    freed. ``retried``: the server had settled this hold before and answered what that did;
    ``replayed``: the answer is the first one again, by its Idempotency-Key."""

    id: str
    status: str
    ingested: int
    duplicates: int
    released: Decimal
    retried: bool
    replayed: bool = False
    request_id: str | None = None

    @classmethod
    def from_json(
        cls, body: Mapping[str, Any], replayed: bool = False, request_id: str | None = None
    ) -> Settlement:
        return cls(
            id=str(body["id"]),
            status=str(body.get("status", "settled")),
            ingested=int(body.get("ingested", 0)),
            duplicates=int(body.get("duplicates", 0)),
            released=_zero(body.get("released")),
            retried=bool(body.get("retried", False)),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True, slots=True)
class Release:
    """A released reservation (``status`` is ``"expired"`` when its TTL had run out)."""

    id: str
    status: str
    released: Decimal
    retried: bool
    replayed: bool = False
    request_id: str | None = None

    @classmethod
    def from_json(
        cls, body: Mapping[str, Any], replayed: bool = False, request_id: str | None = None
    ) -> Release:
        return cls(
            id=str(body["id"]),
            status=str(body.get("status", "released")),
            released=_zero(body.get("released")),
            retried=bool(body.get("retried", False)),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True, slots=True)
class Balance:
    """A customer's live balance. ``usage`` is the API's per-meter usage as it came
    (meter → ``{"quantity": "…", …}``); ``raw`` the whole answer."""

    customer_id: str
    currency: str
    credits_remaining: Decimal
    period_spend: Decimal
    holds: Decimal
    available: Decimal | None
    spend_limit: Decimal | None
    usage: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)
    limits: tuple[UnitLimit, ...] = ()
    """The plan's unit limits in their current windows (``used`` without what is held)."""

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Balance:
        return cls(
            customer_id=str(body.get("customer_id", "")),
            currency=str(body.get("currency", "")),
            credits_remaining=_zero(body.get("credits_remaining")),
            period_spend=_zero(body.get("period_spend")),
            holds=_zero(body.get("holds")),
            available=_amount(body.get("available")),
            spend_limit=_amount(body.get("spend_limit")),
            usage=body.get("usage") or {},
            raw=body,
            limits=tuple(UnitLimit.from_json(x) for x in body.get("limits") or ()),
        )

    def quantity(self, meter: str) -> Decimal:
        """This period's quantity of ``meter`` (0 when nothing was used)."""
        entry = self.usage.get(meter)
        return _zero(entry.get("quantity")) if isinstance(entry, Mapping) else Decimal(0)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event the API refused (``422``, named by its index): dropped, never retried."""

    event: Mapping[str, Any]
    message: str
