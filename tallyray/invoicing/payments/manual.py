"""Bank transfer and other payments made outside Tallyray: nothing is charged here.

:meth:`ManualProvider.collect` leaves the invoice pending, with the invoice number as the
reference the customer quotes on the transfer; an operator marks the invoice paid through the
API when the money arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

from tallyray.errors import SignatureError
from tallyray.invoicing.payments.base import PaymentRequest, PaymentResult, ProviderEvent

__all__ = ["ManualProvider"]


class ManualProvider:
    name = "manual"
    #: No provider account behind it: the same provider serves both environments.
    livemode: bool | None = None

    def collect(self, request: PaymentRequest) -> PaymentResult:
        return PaymentResult(
            provider=self.name,
            status="pending",
            reference=request.invoice_number,
            provider_customer_id=None,
            amount_minor=None,
        )

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int
    ) -> list[ProviderEvent]:
        raise SignatureError("the manual provider has no webhooks")
