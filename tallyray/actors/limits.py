"""How much state one customer may make the server keep: the caps, in one place.

Without them a customer (or a bug in its producer) could grow its live account without bound
— a zero-cost hold per call, a group per request id, a ``unique_count`` member per event —
and slow or stop the shard that holds it with every other customer on it. Each cap is an
operator setting (``TALLYRAY_MAX_…``, see ``docs/server.md``, "Limits"); reaching one is
refused with a message that names it, before anything is written:

==============================  =======  ==============================================
cap                             default  when reached
==============================  =======  ==============================================
active holds per customer         1,000  a new reservation: 409 (settle or release some)
alert rules per customer            100  a new rule: 409 (delete one); plan rules aside
groups per meter per period      10,000  an event starting another group: 422
unique values per meter/period  100,000  an event adding another value: 422
==============================  =======  ==============================================

Groups and values are counted per customer, meter and billing period; a ``unique_count``
meter's values are counted over all of its groups (what the account holds in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = [
    "MAX_ALERT_RULES_PER_CUSTOMER",
    "MAX_GROUPS_PER_METER",
    "MAX_HOLDS_PER_CUSTOMER",
    "MAX_UNIQUE_VALUES",
    "Limits",
]

MAX_HOLDS_PER_CUSTOMER = 1_000
MAX_ALERT_RULES_PER_CUSTOMER = 100
MAX_GROUPS_PER_METER = 10_000
MAX_UNIQUE_VALUES = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    holds_per_customer: int = MAX_HOLDS_PER_CUSTOMER
    """Active (unexpired) holds, zero-cost ones included."""
    alert_rules_per_customer: int = MAX_ALERT_RULES_PER_CUSTOMER
    """The customer's own rules (a plan's default rules do not count)."""
    groups_per_meter: int = MAX_GROUPS_PER_METER
    """Groups of one meter in one billing period."""
    unique_values: int = MAX_UNIQUE_VALUES
    """Distinct values a ``unique_count`` meter holds in one billing period."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {f.name} must be a whole number ≥ 1, not {value!r}")
