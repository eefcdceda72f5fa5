"""What every payment provider looks like from the invoicing side, and amounts in minor units.

A provider does two things: it *collects* an invoice's amount due (:meth:`PaymentProvider.collect`)
and it *reads its webhooks* (:meth:`PaymentProvider.parse_webhook`). Everything provider-specific
(SDK calls, wire formats, error types) stays inside its adapter module; invoicing sees only the
frozen types below.

Amounts cross this boundary as :class:`~decimal.Decimal` in the invoice's currency. Integer
minor units (``1234`` cents) exist only inside adapters, made by :func:`to_minor_units` or by a
provider's :class:`AmountRules` when its table of decimals departs from ISO 4217 / CLDR.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from tallyray.errors import CurrencyError, InvalidInput, ProviderUnavailable
from tallyray.pricing.money import PRICING_CONTEXT, currency

__all__ = [
    "EVENT_KINDS",
    "PURCHASE_PREFIX",
    "CheckoutRequest",
    "CheckoutSession",
    "HostedCheckout",
    "HostedRequest",
    "HostedSession",
    "is_purchase_id",
    "PAYMENT_STATUSES",
    "AmountRules",
    "PaymentProvider",
    "PaymentRequest",
    "PaymentResult",
    "ProviderEvent",
    "SETUP_PREFIX",
    "SavedMethod",
    "SavesMethods",
    "SetupRequest",
    "is_setup_id",
    "to_minor_units",
]

#: What :meth:`PaymentProvider.collect` can report.
PAYMENT_STATUSES = frozenset({"succeeded", "pending", "failed"})


#: Every card-saving session starts so (``set_…``): Adyen's signed ``merchantReference``
#: carries just the id, and it must not be taken for an invoice's.
SETUP_PREFIX = "set_"


def is_setup_id(reference: str | None) -> bool:
    return reference is not None and reference.startswith(SETUP_PREFIX)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostedRequest:
    """A customer sent to the provider's own page (:class:`SetupRequest`,
    :class:`CheckoutRequest`): who it is, and where the provider sends it back."""

    customer_id: str
    customer_email: str | None
    customer_name: str | None
    provider_customer_id: str | None
    #: The page's currency (Stripe's setup mode and Adyen's zero-value check need one too).
    currency: str
    #: Where the provider sends the customer back when done / after giving up. Coming back
    #: proves nothing: only the signed webhook saves the card or books the credit.
    success_url: str
    cancel_url: str

    @property
    def idempotency_key(self) -> str:
        """The provider makes the page once for this key (each kind of request says which)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupRequest(HostedRequest):
    """A customer saving a card on the provider's own page; nothing is charged."""

    setup_id: str

    @property
    def idempotency_key(self) -> str:
        return f"{self.setup_id}:setup"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostedSession:
    """The provider's own page for one request: for a :class:`SetupRequest` (a card to
    save), this; for a :class:`CheckoutRequest`, a :class:`CheckoutSession`."""

    provider: str
    #: The provider's object: a Checkout Session id (``cs_…``), an Adyen session id.
    reference: str
    #: The hosted page to send the customer to.
    url: str | None
    #: The provider's customer the page is for (made for it when the customer had none).
    provider_customer_id: str | None = None


@dataclass(frozen=True, slots=True)
class SavedMethod:
    """A saved card as the provider describes it: its reference and what a person needs to
    recognise it. Nothing else of the card ever reaches Tallyray."""

    reference: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    provider_customer_id: str | None = None


#: What a webhook event can mean to invoicing. ``payment.canceled``: a hosted checkout that
#: expired or was abandoned (only credit purchases have one). ``method.saved``: the customer
#: saved a card on the provider's page (a SetupIntent, an Adyen tokenization), see
#: :class:`SavedMethod`.
EVENT_KINDS = frozenset(
    {"payment.succeeded", "payment.failed", "payment.canceled", "method.saved", "ignored"}
)

#: Every credit purchase id starts so (``pur_…``): a webhook's reference names either an
#: invoice or a purchase, and Adyen's signed ``merchantReference`` carries just the id.
PURCHASE_PREFIX = "pur_"


def is_purchase_id(reference: str | None) -> bool:
    return reference is not None and reference.startswith(PURCHASE_PREFIX)


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """One attempt to collect one invoice's amount due."""

    invoice_id: str
    invoice_number: str
    #: Amount due in ``currency``, already rounded to its minor unit.
    amount: Decimal
    currency: str
    customer_id: str
    customer_email: str | None
    customer_name: str | None
    #: The provider's customer reference stored from an earlier :class:`PaymentResult`.
    provider_customer_id: str | None
    #: A stored payment method: ``"pm_..."`` (Stripe), a ``storedPaymentMethodId`` (Adyen).
    payment_method: str | None
    #: 1, 2, ...: with ``invoice_id`` it makes the idempotency key. Retry a
    #: :class:`~tallyray.errors.ProviderUnavailable` with the *same* attempt.
    attempt: int
    description: str
    #: Set for an off-session credit purchase (a recharge, see
    #: :mod:`tallyray.invoicing.purchases`): the provider's metadata and reference then name
    #: the purchase, whose id is also ``invoice_id`` (the idempotency key's stem).
    purchase_id: str | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.invoice_id}:{self.attempt}"

    def metadata(self) -> dict[str, str]:
        """What the provider keeps on the payment to say whose it is."""
        if self.purchase_id is not None:
            return {"tallyray_purchase_id": self.purchase_id}
        return {"tallyray_invoice_id": self.invoice_id, "invoice_number": self.invoice_number}


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutRequest(HostedRequest):
    """A credit purchase the customer pays on the provider's hosted page."""

    purchase_id: str
    #: What the customer pays, in ``currency``, already rounded to its minor unit.
    amount: Decimal
    description: str

    @property
    def idempotency_key(self) -> str:
        return f"{self.purchase_id}:checkout"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutSession(HostedSession):
    """The provider's hosted page for one purchase: what it charges, and how to embed it."""

    #: Adyen's ``sessionData``, for a Drop-in on the merchant's own page instead.
    session_data: str | None
    amount_minor: int

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "reference": self.reference,
            "url": self.url,
            "session_data": self.session_data,
            "amount_minor": self.amount_minor,
        }


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """What a provider said about one attempt. Declines are results, not exceptions."""

    provider: str
    #: ``"succeeded"``, ``"pending"`` (a webhook settles it later) or ``"failed"``.
    status: str
    #: The provider's payment reference: a PaymentIntent id, a pspReference, an invoice number.
    reference: str | None
    #: To store on the customer and pass back next time.
    provider_customer_id: str | None
    #: The amount sent, in the provider's own minor units (see :class:`AmountRules`).
    amount_minor: int | None
    failure_code: str | None = None
    failure_message: str | None = None

    def __post_init__(self) -> None:
        if self.status not in PAYMENT_STATUSES:
            raise ValueError(f"unknown payment status {self.status!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "status": self.status,
            "reference": self.reference,
            "provider_customer_id": self.provider_customer_id,
            "amount_minor": self.amount_minor,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
        }


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One verified webhook event, reduced to what invoicing needs."""

    provider: str
    #: Unique per provider: process each event once.
    event_id: str
    #: ``"payment.succeeded"``, ``"payment.failed"`` or ``"ignored"``.
    kind: str
    #: Stripe ``livemode`` / Adyen ``live``: which environment sent it.
    livemode: bool | None
    #: Our invoice id, from the payment's metadata (Stripe) or merchantReference (Adyen).
    invoice_id: str | None
    reference: str | None
    failure_message: str | None = None
    #: What the provider says was paid (``payment.succeeded``) or asked for, converted from
    #: its own minor units by its :class:`AmountRules`; ``None`` when the event has no amount.
    #: Invoicing compares it with the invoice's amount due before marking anything paid.
    amount: Decimal | None = None
    #: The ISO 4217 code of ``amount``, upper case, as the provider sent it.
    currency: str | None = None
    #: ``method.saved``: the card-saving session (``set_…``) and the card.
    setup_id: str | None = None
    method: SavedMethod | None = None
    #: The credit purchase the event is about (``pur_…``), instead of an invoice.
    purchase_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "event_id": self.event_id,
            "kind": self.kind,
            "livemode": self.livemode,
            "invoice_id": self.invoice_id,
            "reference": self.reference,
            "failure_message": self.failure_message,
            "amount": None if self.amount is None else format(self.amount, "f"),
            "currency": self.currency,
            "setup_id": self.setup_id,
            "method": None if self.method is None else self.method.reference,
            "purchase_id": self.purchase_id,
        }


class HostedCheckout(Protocol):
    """A provider whose hosted payment page can sell credit (Stripe, Adyen)."""

    name: str

    def start_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        """Create the hosted page for ``request``, once per ``request.idempotency_key``.
        Raises :class:`~tallyray.errors.ProviderUnavailable` like ``collect``."""
        ...


class PaymentProvider(Protocol):
    """A payment service provider behind one adapter."""

    name: str

    @property
    def livemode(self) -> bool | None:
        """``True`` for live-mode credentials (real money), ``False`` for test-mode ones,
        ``None`` for a provider without an account behind it (manual), which serves both
        environments. :class:`~tallyray.invoicing.payments.registry.PaymentProviders` puts a
        provider only in the environment of its mode."""
        ...

    def collect(self, request: PaymentRequest) -> PaymentResult:
        """Charge the stored payment method, once per ``request.idempotency_key``.

        Raises :class:`~tallyray.errors.ProviderUnavailable` when the provider cannot be
        reached or fails on its side (retry with the same attempt), or rejects our
        credentials or request (the message says it is a configuration problem).
        """
        ...

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int
    ) -> list[ProviderEvent]:
        """The events in one webhook delivery, after checking its signature.

        ``headers`` have lower-case names, ``body`` is the raw request body and ``now`` is
        the time in unix microseconds. Raises :class:`~tallyray.errors.SignatureError` saying
        what is wrong when the signature is missing, wrong or stale.
        """
        ...


class SavesMethods(Protocol):
    """A provider whose own page can save a card for off-session charges (Stripe, Adyen)."""

    name: str

    def start_setup(self, request: SetupRequest) -> HostedSession:
        """Create the page for ``request``, once per ``request.idempotency_key``. Raises
        :class:`~tallyray.errors.ProviderUnavailable` like ``collect``."""
        ...

    def describe_method(self, method: SavedMethod) -> SavedMethod:
        """``method`` with its brand, last 4 and expiry filled in (Stripe's webhook names the
        PaymentMethod only; Adyen's notification carries them already)."""
        ...

    def forget_method(self, method: SavedMethod) -> None:
        """Tell the provider the card is no longer to be charged (detach / delete the
        token). Raises :class:`~tallyray.errors.ProviderUnavailable`."""
        ...


def to_minor_units(amount: Decimal, currency_code: str, *, digits: int | None = None) -> int:
    """``amount`` as an integer count of minor units, exactly.

    EUR 12.34 → 1234, JPY 1234 → 1234, KWD 1.235 → 1235. ``digits`` defaults to the
    currency's minor unit (:func:`tallyray.pricing.money.currency`); an adapter passes its
    provider's own number where that differs. :class:`ValueError` when the amount has more
    decimal places than ``digits`` allows: nothing is ever rounded here.
    """
    if isinstance(amount, bool) or not isinstance(amount, Decimal):
        raise TypeError(f"amount must be a Decimal, not {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"amount {amount} is not a finite number")
    places = currency(currency_code).minor_units if digits is None else digits
    scaled = amount.scaleb(places, context=PRICING_CONTEXT)
    if scaled != scaled.to_integral_value(context=PRICING_CONTEXT):
        raise ValueError(
            f"{amount} {currency_code} has more decimal places than the {places} "
            f"that {currency_code} allows here"
        )
    return int(scaled)


@dataclass(frozen=True, slots=True)
class AmountRules:
    """How one provider writes amounts as integers.

    Providers publish their own table of decimals per currency, and it is not always ISO 4217
    or CLDR: Stripe reads ``ISK 100`` as one króna, Adyen reads ``CLP 100`` as one peso. Each
    adapter states its table once, here, so a 100× mistake cannot hide in a multiplication.
    """

    provider: str
    #: Decimals of every currency not listed in ``digits``.
    default_digits: int = 2
    digits: Mapping[str, int] = field(default_factory=dict)
    #: Integer amounts that must be a multiple of this (Stripe: KWD in tens of fils).
    multiple_of: Mapping[str, int] = field(default_factory=dict)
    #: Currencies this adapter will not charge, and why.
    refused: Mapping[str, str] = field(default_factory=dict)

    def digits_for(self, currency_code: str) -> int:
        return self.digits.get(currency_code, self.default_digits)

    def minor_units(self, amount: Decimal, currency_code: str) -> int:
        """The integer the provider expects for ``amount``; :class:`CurrencyError` when the
        provider cannot take that exact amount, :class:`InvalidInput` when it is not positive."""
        currency(currency_code)  # unknown codes fail here, with the usual message
        if currency_code in self.refused:
            raise CurrencyError(
                f"{self.provider} payments in {currency_code} are not supported by Tallyray: "
                f"{self.refused[currency_code]}"
            )
        if not amount > 0:
            raise InvalidInput(f"nothing to collect: the amount due is {amount} {currency_code}")
        places = self.digits_for(currency_code)
        try:
            minor = to_minor_units(amount, currency_code, digits=places)
        except ValueError:
            raise CurrencyError(
                f"{self.provider} takes {currency_code} amounts with {places} decimal places; "
                f"{amount} {currency_code} has more and cannot be charged exactly"
            ) from None
        step = self.multiple_of.get(currency_code, 1)
        if minor % step:
            quantum = Decimal(step).scaleb(-places)
            raise CurrencyError(
                f"{self.provider} takes {currency_code} only in multiples of "
                f"{quantum:f} {currency_code}; {amount} {currency_code} is not one. Round the "
                f"invoice total to {quantum:f} or collect it another way (see docs/payments.md)"
            )
        return minor

    def decimal_amount(self, value: int, currency_code: str) -> Decimal:
        """The inverse of :meth:`minor_units`, for amounts the provider reports (webhooks):
        Stripe's ``ISK 50000`` is 500 krónur, Adyen's ``CLP 150000`` is 1500 pesos. Exact:
        no rounding, whatever the currency's own minor unit."""
        return Decimal(value).scaleb(-self.digits_for(currency_code))

    def provider_units(self, amount: Decimal, currency_code: str) -> int:
        """:meth:`minor_units` for ``collect``: an amount the provider cannot take is, like any
        request it would reject, a :class:`ProviderUnavailable` that names the configuration
        problem. Nothing is sent to the provider. An unknown code stays a CurrencyError."""
        currency(currency_code)
        try:
            return self.minor_units(amount, currency_code)
        except CurrencyError as e:
            raise ProviderUnavailable(
                f"{e.message}. This is a configuration problem: retrying will not help"
            ) from e
