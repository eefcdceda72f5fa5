"""Payment providers: collect an invoice's amount due, read the provider's webhooks.

One :class:`PaymentProvider` protocol (``base.py``) and one adapter module per provider:
``manual.py`` (bank transfer, nothing charged), ``stripe_provider.py`` and
``adyen_provider.py`` (the official SDKs); ``registry.py`` keeps each environment's providers
apart. See docs/payments.md.
"""

from tallyray.invoicing.payments.adyen_provider import ADYEN_AMOUNTS, AdyenProvider
from tallyray.invoicing.payments.base import (
    EVENT_KINDS,
    PAYMENT_STATUSES,
    AmountRules,
    PaymentProvider,
    PaymentRequest,
    PaymentResult,
    ProviderEvent,
    to_minor_units,
)
from tallyray.invoicing.payments.manual import ManualProvider
from tallyray.invoicing.payments.registry import ENVIRONMENTS, PaymentProviders
from tallyray.invoicing.payments.stripe_provider import STRIPE_AMOUNTS, StripeProvider

__all__ = [
    "ADYEN_AMOUNTS",
    "ENVIRONMENTS",
    "EVENT_KINDS",
    "PAYMENT_STATUSES",
    "STRIPE_AMOUNTS",
    "AdyenProvider",
    "AmountRules",
    "ManualProvider",
    "PaymentProvider",
    "PaymentProviders",
    "PaymentRequest",
    "PaymentResult",
    "ProviderEvent",
    "StripeProvider",
    "to_minor_units",
]
