"""The pricing engine: pure functions and values, no Ray, no SQL, no I/O, no clock.

The public face::

    from tallyray.pricing import parse_config, rate, Money, currency
"""

from tallyray.pricing.config import PricingConfig, parse_config, parse_meter, parse_plan
from tallyray.pricing.credits import Burned, CreditGrant, Ledger
from tallyray.pricing.events import Event, parse_event, parse_timestamp
from tallyray.pricing.meters import MeterSet, MeterSpec, Usage
from tallyray.pricing.models import MODELS, Priced, Tier, TierLine, incremental_cost, price
from tallyray.pricing.money import Currency, Money, currency, parse_amount, round_amount
from tallyray.pricing.plans import Charge, Line, Plan, Preview, rate, usage_cost

__all__ = [
    "MODELS",
    "Burned",
    "Charge",
    "CreditGrant",
    "Currency",
    "Event",
    "Ledger",
    "Line",
    "MeterSet",
    "MeterSpec",
    "Money",
    "Plan",
    "Preview",
    "Priced",
    "PricingConfig",
    "Tier",
    "TierLine",
    "Usage",
    "currency",
    "incremental_cost",
    "parse_amount",
    "parse_config",
    "parse_event",
    "parse_meter",
    "parse_plan",
    "parse_timestamp",
    "price",
    "rate",
    "round_amount",
    "usage_cost",
]
