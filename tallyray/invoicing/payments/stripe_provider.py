"""Stripe: an off-session PaymentIntent per attempt, and signed webhooks.

:meth:`StripeProvider.collect` creates a Stripe customer the first time (its id comes back in
:attr:`PaymentResult.provider_customer_id` to be stored), then creates and confirms a
PaymentIntent with the idempotency key ``"<invoice id>:<attempt>"``: a retried attempt can never
charge twice. How Stripe's answers map to results and errors:

================================================  =============================================
Stripe says                                       Tallyray
================================================  =============================================
PaymentIntent ``succeeded``                       ``succeeded``
``requires_action``, ``processing``, ...          ``pending`` (a webhook settles it)
402 ``card_error`` (decline, authentication)      ``failed`` with Stripe's code and message
400 about the payment method, amount too small    ``failed``
401 / 403 / other 400                             ProviderUnavailable: a configuration problem
429, 5xx, network errors                          ProviderUnavailable: retry the same attempt
================================================  =============================================

The SDK's own HTTP client is ``requests``, with a small, pinned number of network retries (the
idempotency key makes them safe). :meth:`StripeProvider.close` releases its connections.

Stripe has one host for both modes: the API key decides whether a call moves real money
(``sk_live_``/``rk_live_``) or not (``sk_test_``/``rk_test_``). A provider is built for one mode
(``live``) and refuses a key of the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import stripe

from tallyray.errors import ConfigError, Problem, ProviderUnavailable, SignatureError
from tallyray.invoicing.payments.base import (
    AmountRules,
    CheckoutRequest,
    CheckoutSession,
    HostedSession,
    PaymentRequest,
    PaymentResult,
    ProviderEvent,
    SavedMethod,
    SetupRequest,
)
from tallyray.invoicing.payments.endpoints import override_problem

__all__ = ["STRIPE_AMOUNTS", "STRIPE_API", "StripeProvider", "stripe_key_mode"]

#: Stripe's API, for both modes.
STRIPE_API = "https://api.stripe.com"

#: Secret and restricted key prefixes → the mode they act in. Publishable keys (``pk_``) cannot
#: create payments and are not listed.
_KEY_MODES = {"sk_live_": "live", "rk_live_": "live", "sk_test_": "test", "rk_test_": "test"}

# fmt: off
_ZERO_DECIMAL = (
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA",
    "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
)
_THREE_DECIMAL = ("BHD", "JOD", "KWD", "OMR", "TND")
# fmt: on

#: Stripe's table of decimals (https://docs.stripe.com/currencies). Three-decimal amounts
#: must end in 0 ("round to the nearest ten"): we refuse rather than round, see
#: docs/payments.md. ISK stays two-decimal in Stripe's API but must be whole krónur.
STRIPE_AMOUNTS = AmountRules(
    provider="Stripe",
    default_digits=2,
    digits={**dict.fromkeys(_ZERO_DECIMAL, 0), **dict.fromkeys(_THREE_DECIMAL, 3)},
    multiple_of={**dict.fromkeys(_THREE_DECIMAL, 10), "ISK": 100},
)

#: PaymentIntent statuses that a later webhook will settle.
_PENDING = frozenset({"requires_action", "processing", "requires_confirmation", "requires_capture"})

#: Stripe event type → our event kind; every other type is ``"ignored"``. A Checkout
#: Session is ``completed`` when the customer finished the page: paid for a card, or still
#: ``unpaid`` for a delayed method (SEPA debit), which an ``async_payment_*`` event settles.
_EVENT_KINDS = {
    "payment_intent.succeeded": "payment.succeeded",
    "payment_intent.payment_failed": "payment.failed",
    "checkout.session.completed": "payment.succeeded",
    "checkout.session.async_payment_succeeded": "payment.succeeded",
    "checkout.session.async_payment_failed": "payment.failed",
    "checkout.session.expired": "payment.canceled",
}

#: Invalid-request codes that mean "this payment cannot be made", not "we are misconfigured".
_FAILED_REQUEST_CODES = frozenset({"amount_too_small", "amount_too_large"})


def stripe_key_mode(api_key: str) -> str | None:
    """``"live"`` or ``"test"`` from a secret or restricted key's prefix; ``None`` for anything
    else (a publishable key, a typo)."""
    for prefix, mode in _KEY_MODES.items():
        if api_key.startswith(prefix):
            return mode
    return None


def _prefix(api_key: str) -> str:
    """What an error may show of a key: its type and mode (``sk_test_``), never the secret."""
    found = re.match(r"[a-z]{2,5}_(?:(?:live|test)_)?", api_key)
    return found.group() if found else "?"


class StripeProvider:
    """Collects invoices through Stripe PaymentIntents and reads Stripe webhooks.

    ``live`` says which mode the provider is for; ``api_key`` must be a key of that mode.
    ``api_base`` points the SDK at another host, a local fake in tests (see
    :mod:`~tallyray.invoicing.payments.endpoints`); ``None`` is ``https://api.stripe.com``.
    ``tolerance_seconds`` bounds how far a webhook's signed timestamp may be from ``now``,
    either way.
    """

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        tolerance_seconds: int = 300,
        *,
        live: bool = False,
        max_network_retries: int = 1,
        timeout_seconds: float = 30.0,
    ) -> None:
        mode = "live" if live else "test"
        problems = []
        key_mode = stripe_key_mode(api_key or "")
        if not api_key or not api_key.strip():
            problems.append(
                Problem("api_key", f"is empty: use a {mode}-mode secret key, sk_{mode}_...")
            )
        elif key_mode is None:
            problems.append(
                Problem(
                    "api_key",
                    f"is not a Stripe secret or restricted key ({_prefix(api_key)}...): use a "
                    f"{mode}-mode key, sk_{mode}_... or rk_{mode}_...",
                )
            )
        elif key_mode != mode:
            problems.append(
                Problem(
                    "api_key",
                    f"is a {key_mode}-mode key ({_prefix(api_key)}...) but is used for {mode} "
                    f"payments: use a {mode}-mode key, sk_{mode}_... or rk_{mode}_...",
                )
            )
        if not webhook_secret or not webhook_secret.strip():
            problems.append(
                Problem("webhook_secret", "is empty: use the endpoint's signing secret, whsec_...")
            )
        if tolerance_seconds <= 0:
            problems.append(Problem("tolerance_seconds", "must be a positive number of seconds"))
        if max_network_retries < 0:
            problems.append(Problem("max_network_retries", "must be 0 or more"))
        endpoint = api_base.rstrip("/") if api_base else STRIPE_API
        wrong_place = override_problem(endpoint, STRIPE_API, mode)
        if wrong_place:
            problems.append(Problem("api_base", wrong_place))
        if problems:
            raise ConfigError.of(problems)
        self._live = live
        #: Where this provider's calls go.
        self.endpoint = endpoint
        self._webhook_secret = webhook_secret
        self._tolerance_seconds = tolerance_seconds
        self._http = stripe.RequestsClient(timeout=timeout_seconds)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": endpoint},
            max_network_retries=max_network_retries,
            http_client=self._http,
        )

    @property
    def livemode(self) -> bool:
        """Whether this provider's key moves real money."""
        return self._live

    def close(self) -> None:
        """Close the HTTP connections this thread opened."""
        self._http.close()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    def __enter__(self) -> StripeProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- collecting ----------------------------------------------------------------------

    def collect(self, request: PaymentRequest) -> PaymentResult:
        amount_minor = STRIPE_AMOUNTS.provider_units(request.amount, request.currency)
        try:
            customer_id = request.provider_customer_id or self._create_customer(request)
        except stripe.StripeError as e:
            raise _unavailable(e, self._live) from e
        if not request.payment_method:
            return PaymentResult(
                provider=self.name,
                status="failed",
                reference=None,
                provider_customer_id=customer_id,
                amount_minor=amount_minor,
                failure_code="payment_method_missing",
                failure_message="the customer has no stored payment method",
            )
        try:
            intent = self._client.v1.payment_intents.create(
                params={
                    "amount": amount_minor,
                    "currency": request.currency.lower(),
                    "customer": customer_id,
                    "payment_method": request.payment_method,
                    "off_session": True,
                    "confirm": True,
                    # Server-side confirmation cannot follow a redirect.
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                    "description": request.description,
                    "metadata": request.metadata(),
                },
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.CardError as e:
            return self._declined(e, customer_id, amount_minor)
        except stripe.InvalidRequestError as e:
            if e.code in _FAILED_REQUEST_CODES or getattr(e, "param", None) == "payment_method":
                return self._declined(e, customer_id, amount_minor)
            raise _unavailable(e, self._live) from e
        except stripe.StripeError as e:
            raise _unavailable(e, self._live) from e
        return self._result(intent, amount_minor)

    # -- hosted checkout (credit purchases) ------------------------------------------------

    def start_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        """A Checkout Session in ``payment`` mode for one credit purchase. The purchase id is
        in the session's and its PaymentIntent's metadata, which the signed webhooks carry
        back; the session id is the purchase's provider reference."""
        amount_minor = STRIPE_AMOUNTS.provider_units(request.amount, request.currency)
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": amount_minor,
                        "product_data": {"name": request.description},
                    },
                }
            ],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": request.purchase_id,
            "metadata": {"tallyray_purchase_id": request.purchase_id},
            "payment_intent_data": {"metadata": {"tallyray_purchase_id": request.purchase_id}},
        }
        if request.provider_customer_id:
            params["customer"] = request.provider_customer_id
        elif request.customer_email:
            params["customer_email"] = request.customer_email
        try:
            session = self._client.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]  # a plain dict of the documented keys
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as e:
            raise _unavailable(e, self._live) from e
        customer = session.customer
        return CheckoutSession(
            provider=self.name,
            reference=str(session.id),
            url=session.url,
            session_data=None,
            amount_minor=amount_minor,
            provider_customer_id=customer if isinstance(customer, str) else None,
        )

    # -- saving a card ---------------------------------------------------------------------

    def start_setup(self, request: SetupRequest) -> HostedSession:
        """A Checkout Session in ``setup`` mode: the customer enters a card on Stripe's page,
        Stripe makes a SetupIntent for off-session use, and its signed
        ``setup_intent.succeeded`` event (with our setup id in the metadata) saves it. The
        Stripe customer is created first when the customer has none (a saved card belongs
        to one)."""
        try:
            customer_id = request.provider_customer_id or self._new_customer(
                request.customer_id,
                request.customer_email,
                request.customer_name,
                f"{request.setup_id}:customer",
            )
            metadata = {
                "tallyray_setup_id": request.setup_id,
                "tallyray_customer_id": request.customer_id,
            }
            session = self._client.v1.checkout.sessions.create(
                params={
                    "mode": "setup",
                    "currency": request.currency.lower(),
                    "customer": customer_id,
                    "success_url": request.success_url,
                    "cancel_url": request.cancel_url,
                    "client_reference_id": request.setup_id,
                    "metadata": metadata,
                    "setup_intent_data": {"metadata": metadata},
                },
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as e:
            raise _unavailable(e, self._live) from e
        return HostedSession(
            provider=self.name,
            reference=str(session.id),
            url=session.url,
            provider_customer_id=customer_id,
        )

    def describe_method(self, method: SavedMethod) -> SavedMethod:
        try:
            found = self._client.v1.payment_methods.retrieve(method.reference)
        except stripe.StripeError as e:
            raise _unavailable(e, self._live) from e
        card = found.card
        customer = found.customer
        return SavedMethod(
            reference=method.reference,
            brand=card.brand if card else found.type,
            last4=card.last4 if card else None,
            exp_month=card.exp_month if card else None,
            exp_year=card.exp_year if card else None,
            provider_customer_id=(
                customer if isinstance(customer, str) else method.provider_customer_id
            ),
        )

    def forget_method(self, method: SavedMethod) -> None:
        try:
            self._client.v1.payment_methods.detach(method.reference)
        except stripe.InvalidRequestError as e:
            if e.code != "resource_missing" and "not attached" not in (e.user_message or ""):
                raise _unavailable(e, self._live) from e
        except stripe.StripeError as e:
            raise _unavailable(e, self._live) from e

    def _new_customer(
        self, customer_id: str, email: str | None, name: str | None, idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"metadata": {"tallyray_customer_id": customer_id}}
        if email:
            params["email"] = email
        if name:
            params["name"] = name
        customer = self._client.v1.customers.create(
            params=params,  # type: ignore[arg-type]  # a plain dict of the documented keys
            options={"idempotency_key": idempotency_key},
        )
        return str(customer.id)

    def _create_customer(self, request: PaymentRequest) -> str:
        params: dict[str, Any] = {"metadata": {"tallyray_customer_id": request.customer_id}}
        if request.customer_email:
            params["email"] = request.customer_email
        if request.customer_name:
            params["name"] = request.customer_name
        customer = self._client.v1.customers.create(
            params=params,  # type: ignore[arg-type]  # a plain dict of the documented keys
            # Tied to the attempt, so retrying it after an outage reuses the customer.
            options={"idempotency_key": f"{request.idempotency_key}:customer"},
        )
        return str(customer.id)

    def _result(self, intent: stripe.PaymentIntent, amount_minor: int) -> PaymentResult:
        status = intent.status
        customer = intent.customer
        customer_id = customer if isinstance(customer, str) or customer is None else customer.id
        if status == "succeeded":
            outcome = "succeeded"
        elif status in _PENDING:
            outcome = "pending"
        else:  # requires_payment_method after a failed confirmation, canceled
            error = intent.last_payment_error
            return PaymentResult(
                provider=self.name,
                status="failed",
                reference=intent.id,
                provider_customer_id=customer_id,
                amount_minor=amount_minor,
                failure_code=(error.code if error else None) or status,
                failure_message=(error.message if error else None)
                or f"the PaymentIntent is {status}",
            )
        return PaymentResult(
            provider=self.name,
            status=outcome,
            reference=intent.id,
            provider_customer_id=customer_id,
            amount_minor=amount_minor,
        )

    def _declined(
        self, error: stripe.StripeError, customer_id: str, amount_minor: int
    ) -> PaymentResult:
        """A failed result from a 402 card error or a 400 about this payment."""
        body = error.json_body if isinstance(error.json_body, dict) else {}
        details = body.get("error")
        details = details if isinstance(details, dict) else {}
        intent = details.get("payment_intent")
        message = error.user_message or "the payment was declined"
        if details.get("decline_code"):
            message = f"{message} (decline code: {details['decline_code']})"
        return PaymentResult(
            provider=self.name,
            status="failed",
            reference=str(intent["id"]) if isinstance(intent, dict) and "id" in intent else None,
            provider_customer_id=customer_id,
            amount_minor=amount_minor,
            failure_code=error.code or "card_error",
            failure_message=message,
        )

    # -- webhooks ------------------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: int
    ) -> list[ProviderEvent]:
        header = headers.get("stripe-signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("the webhook body is not UTF-8 text") from None
        # The SDK checks the HMAC; the timestamp check is ours, against the ``now`` passed
        # in (the SDK would read time.time(), and only reject timestamps in the past).
        try:
            stripe.WebhookSignature.verify_header(text, header, self._webhook_secret, None)
        except stripe.SignatureVerificationError as e:
            raise SignatureError(f"Stripe-Signature does not verify: {e.user_message}") from None
        signed_at = _signed_timestamp(header)
        age = now // 1_000_000 - signed_at
        if abs(age) > self._tolerance_seconds:
            raise SignatureError(
                f"Stripe-Signature timestamp {signed_at} is {abs(age)} s "
                f"{'old' if age > 0 else 'in the future'}, outside the tolerance of "
                f"{self._tolerance_seconds} s"
            )
        try:
            event = json.loads(text)
            event_id, event_type = str(event["id"]), str(event["type"])
            obj = event.get("data", {}).get("object", {})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SignatureError("a signed body that is not a Stripe event") from None
        if event_type == "setup_intent.succeeded":
            return [_saved_method_event(event_id, event, obj)]
        kind = _EVENT_KINDS.get(event_type, "ignored")
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        invoice_id = metadata.get("tallyray_invoice_id")
        purchase_id = metadata.get("tallyray_purchase_id")
        session = event_type.startswith("checkout.session.")
        if session and invoice_id:
            kind = "ignored"  # invoices are not paid through Checkout Sessions
        if not invoice_id and not purchase_id:
            kind = "ignored"  # a payment Tallyray did not start
        if event_type == "checkout.session.completed" and obj.get("payment_status") != "paid":
            kind = "ignored"  # a delayed method: an async_payment_* event settles it
        failure = None
        if kind == "payment.failed":
            error = obj.get("last_payment_error")
            failure = str(error.get("message")) if isinstance(error, dict) else "the payment failed"
        elif kind == "payment.canceled":
            failure = "the checkout page expired before the customer paid"
        livemode = event.get("livemode")
        amount, code = _amount(obj, kind) if isinstance(obj, dict) else (None, None)
        reference = obj.get("id") if isinstance(obj, dict) else None
        if session and isinstance(obj.get("payment_intent"), str):
            reference = obj["payment_intent"]  # the payment, as payment_intent.* names it
        return [
            ProviderEvent(
                provider=self.name,
                event_id=event_id,
                kind=kind,
                livemode=livemode if isinstance(livemode, bool) else None,
                invoice_id=str(invoice_id) if invoice_id else None,
                reference=str(reference) if reference else None,
                failure_message=failure,
                amount=amount,
                currency=code,
                purchase_id=str(purchase_id) if purchase_id and not invoice_id else None,
            )
        ]


def _saved_method_event(event_id: str, event: dict[str, Any], obj: Any) -> ProviderEvent:
    """A SetupIntent that succeeded: ``method.saved`` when Tallyray started it (our setup id
    in its metadata) and it has a payment method, ``ignored`` otherwise."""
    livemode = event.get("livemode")
    intent = obj if isinstance(obj, dict) else {}
    metadata = intent.get("metadata") if isinstance(intent.get("metadata"), dict) else {}
    setup_id = metadata.get("tallyray_setup_id") if metadata else None
    method = intent.get("payment_method")
    method_id = method.get("id") if isinstance(method, dict) else method
    customer = intent.get("customer")
    saved = isinstance(setup_id, str) and isinstance(method_id, str)
    return ProviderEvent(
        provider="stripe",
        event_id=event_id,
        kind="method.saved" if saved else "ignored",
        livemode=livemode if isinstance(livemode, bool) else None,
        invoice_id=None,
        reference=str(intent["id"]) if "id" in intent else None,
        setup_id=str(setup_id) if saved else None,
        method=SavedMethod(
            reference=str(method_id),
            provider_customer_id=customer if isinstance(customer, str) else None,
        )
        if saved
        else None,
    )


def _amount(intent: dict[str, Any], kind: str) -> tuple[Decimal | None, str | None]:
    """A PaymentIntent's amount as a Decimal and its currency, upper case. For a success it is
    ``amount_received``, what was actually captured, which can be less than ``amount``."""
    raw_code = intent.get("currency")
    code = raw_code.upper() if isinstance(raw_code, str) else None
    value = _whole(intent.get("amount_received")) if kind == "payment.succeeded" else None
    if value is None:
        value = _whole(intent.get("amount"))
    if value is None:  # a Checkout Session
        value = _whole(intent.get("amount_total"))
    if code is None or value is None:
        return None, code
    return STRIPE_AMOUNTS.decimal_amount(value, code), code


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _signed_timestamp(header: str) -> int:
    """The ``t=`` of a Stripe-Signature header the SDK has already accepted."""
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            return int(value)
    raise SignatureError("Stripe-Signature has no timestamp")  # pragma: no cover


def _unavailable(error: stripe.StripeError, live: bool) -> ProviderUnavailable:
    """The error to raise for a Stripe failure that is not about this payment."""
    detail = error.user_message or type(error).__name__
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        variable = "TALLYRAY_STRIPE_API_KEY" if live else "TALLYRAY_STRIPE_TEST_API_KEY"
        return ProviderUnavailable(
            f"Stripe rejected the API key: {detail}. This is a configuration problem: "
            f"check {variable}"
        )
    if isinstance(error, stripe.InvalidRequestError | stripe.IdempotencyError):
        param = getattr(error, "param", None)
        where = f" (parameter {param})" if param else ""
        return ProviderUnavailable(
            f"Stripe rejected the request as invalid{where}: {detail}. This is a configuration "
            "or data problem; retrying will not help"
        )
    if isinstance(error, stripe.RateLimitError):
        return ProviderUnavailable(f"Stripe is rate-limiting requests: {detail}")
    if isinstance(error, stripe.APIConnectionError):
        return ProviderUnavailable(f"cannot reach Stripe: {detail}")
    status = f" (HTTP {error.http_status})" if error.http_status else ""
    return ProviderUnavailable(f"Stripe failed on its side{status}: {detail}")
