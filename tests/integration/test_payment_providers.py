"""The payment adapters, with the real Stripe and Adyen SDKs, against local wire-format fakes.

No Ray, no database: each test starts ``FakeStripe`` / ``FakeAdyen`` (and a ``WebhookInbox``
for the webhooks they send) on 127.0.0.1 with a free port. Nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from tallyray.errors import (
    ConfigError,
    CurrencyError,
    InvalidInput,
    ProviderUnavailable,
    SignatureError,
)
from tallyray.invoicing.payments import (
    AdyenProvider,
    ManualProvider,
    PaymentRequest,
    ProviderEvent,
    StripeProvider,
)

# tests/ holds the fakes package; pytest puts only this directory on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes import WebhookInbox  # noqa: E402
from fakes.adyen_server import FakeAdyen, notification_item, signed_notification  # noqa: E402
from fakes.stripe_server import FakeStripe, sign_stripe_payload  # noqa: E402

STRIPE_KEY = "sk_test_tallyray"
STRIPE_SECRET = "whsec_tallyray_test"
ADYEN_KEY = "AQE_test_tallyray"
ADYEN_MERCHANT = "TallyrayTest"
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
NOW_S = 1_760_000_000
NOW = NOW_S * 1_000_000  # parse_webhook takes unix microseconds

REQUEST = PaymentRequest(
    invoice_id="inv_01",
    invoice_number="TR-000042",
    amount=Decimal("12.34"),
    currency="EUR",
    customer_id="cust_01",
    customer_email="ada@example.com",
    customer_name="Ada Lovelace",
    provider_customer_id=None,
    payment_method="pm_card_visa",
    attempt=1,
    description="Invoice TR-000042",
)


def request(**changes: Any) -> PaymentRequest:
    return dataclasses.replace(REQUEST, **changes)


@pytest.fixture(autouse=True)
def _no_stripe_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK would otherwise write a telemetry id under ~/.config/stripe.
    monkeypatch.setattr(stripe, "enable_telemetry", False)


@pytest.fixture
def inbox() -> Iterator[WebhookInbox]:
    with WebhookInbox() as server:
        yield server


@pytest.fixture
def fake_stripe(inbox: WebhookInbox) -> Iterator[FakeStripe]:
    with FakeStripe(
        STRIPE_KEY, webhook_url=f"{inbox.url}/webhooks/stripe", webhook_secret=STRIPE_SECRET
    ) as server:
        yield server


@pytest.fixture
def stripe_provider(fake_stripe: FakeStripe) -> Iterator[StripeProvider]:
    with StripeProvider(
        STRIPE_KEY, STRIPE_SECRET, api_base=fake_stripe.url, max_network_retries=0
    ) as provider:
        yield provider


@pytest.fixture
def fake_adyen(inbox: WebhookInbox) -> Iterator[FakeAdyen]:
    with FakeAdyen(
        ADYEN_KEY, ADYEN_MERCHANT, webhook_url=f"{inbox.url}/webhooks/adyen", hmac_key=ADYEN_HMAC
    ) as server:
        yield server


@pytest.fixture
def adyen_provider(fake_adyen: FakeAdyen) -> Iterator[AdyenProvider]:
    with AdyenProvider(ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, api_base=fake_adyen.url) as provider:
        yield provider


# -- Stripe: collecting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "amount", "sent"),
    [
        ("EUR", "12.34", 1234),  # 12.34 × 10²
        ("JPY", "1234", 1234),  # zero-decimal: × 10⁰
        ("KWD", "1.230", 1230),  # three decimals; Stripe needs the last one to be 0
        ("ISK", "500", 50000),  # two decimals in Stripe's API, whole krónur only
    ],
)
def test_stripe_charges_the_amount_in_its_minor_units(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe, currency: str, amount: str, sent: int
) -> None:
    result = stripe_provider.collect(request(currency=currency, amount=Decimal(amount)))

    assert (result.status, result.amount_minor) == ("succeeded", sent)
    create = [r for r in fake_stripe.received if r.path == "/v1/payment_intents"][0]
    assert create.headers["idempotency-key"] == "inv_01:1"
    intent = fake_stripe.payment_intents[str(result.reference)]
    assert (intent["amount"], intent["currency"]) == (sent, currency.lower())
    assert intent["metadata"] == {"tallyray_invoice_id": "inv_01", "invoice_number": "TR-000042"}
    assert intent["customer"] == result.provider_customer_id
    assert intent["description"] == "Invoice TR-000042"


@pytest.mark.parametrize(
    ("payment_method", "status", "code", "message"),
    [
        ("pm_card_visa", "succeeded", None, None),
        ("pm_card_authenticationRequired", "pending", None, None),  # requires_action
        (
            "pm_card_chargeDeclined",
            "failed",
            "card_declined",
            "Your card was declined. (decline code: generic_decline)",
        ),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "failed",
            "card_declined",
            "Your card has insufficient funds. (decline code: insufficient_funds)",
        ),
        ("pm_card_chargeDeclinedExpiredCard", "failed", "expired_card", "Your card has expired."),
        ("pm_gone", "failed", "resource_missing", "No such PaymentMethod: 'pm_gone'"),
        (None, "failed", "payment_method_missing", "the customer has no stored payment method"),
    ],
)
def test_stripe_outcomes(
    stripe_provider: StripeProvider,
    payment_method: str | None,
    status: str,
    code: str | None,
    message: str | None,
) -> None:
    result = stripe_provider.collect(request(payment_method=payment_method))

    assert (result.provider, result.status) == ("stripe", status)
    assert (result.failure_code, result.failure_message) == (code, message)
    assert result.provider_customer_id is not None and result.provider_customer_id.startswith(
        "cus_"
    )


def test_stripe_decline_keeps_the_payment_intent_reference(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    result = stripe_provider.collect(request(payment_method="pm_card_chargeDeclined"))

    intent = fake_stripe.payment_intents[str(result.reference)]
    assert intent["status"] == "requires_payment_method"


def test_stripe_creates_the_customer_once(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    first = stripe_provider.collect(request())
    second = stripe_provider.collect(
        request(invoice_id="inv_02", provider_customer_id=first.provider_customer_id)
    )

    assert list(fake_stripe.customers) == [first.provider_customer_id]
    customer = fake_stripe.customers[str(first.provider_customer_id)]
    assert (customer["email"], customer["name"]) == ("ada@example.com", "Ada Lovelace")
    assert customer["metadata"] == {"tallyray_customer_id": "cust_01"}
    assert second.provider_customer_id == first.provider_customer_id
    assert [r.path for r in fake_stripe.received] == [
        "/v1/customers",
        "/v1/payment_intents",
        "/v1/payment_intents",
    ]


def test_stripe_same_attempt_charges_once(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe
) -> None:
    first = stripe_provider.collect(request())
    again = stripe_provider.collect(request())
    next_attempt = stripe_provider.collect(request(attempt=2))

    assert again == first
    assert next_attempt.reference != first.reference
    assert len(fake_stripe.payment_intents) == 2


@pytest.mark.parametrize(
    ("currency", "amount", "error", "message"),
    [
        # Stripe wants the last of KWD's three digits to be 0: 1.235 is refused, not rounded.
        ("KWD", "1.235", ProviderUnavailable, r"multiples of 0.010 KWD.* configuration problem"),
        ("LYD", "1.235", ProviderUnavailable, r"Stripe takes LYD amounts with 2 decimal places"),
        ("EUR", "0.00", InvalidInput, r"nothing to collect"),
        ("EURO", "1.00", CurrencyError, r"unknown currency code 'EURO'"),
    ],
)
def test_stripe_refuses_amounts_before_calling_stripe(
    stripe_provider: StripeProvider,
    fake_stripe: FakeStripe,
    currency: str,
    amount: str,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        stripe_provider.collect(request(currency=currency, amount=Decimal(amount)))
    assert fake_stripe.received == []


@pytest.mark.parametrize(
    ("outage", "message"),
    [
        ("bad key", r"Stripe rejected the API key: Invalid API Key .* configuration problem"),
        ("unknown customer", r"invalid \(parameter customer\): No such customer: 'cus_gone'"),
        ("500", r"Stripe failed on its side \(HTTP 500\)"),
        ("503", r"Stripe failed on its side \(HTTP 503\)"),
        ("429", r"Stripe is rate-limiting requests"),
        ("down", r"cannot reach Stripe"),
    ],
)
def test_stripe_unavailable(fake_stripe: FakeStripe, outage: str, message: str) -> None:
    key, customer = STRIPE_KEY, None
    if outage == "bad key":
        key = "sk_test_not_this_one"
    elif outage == "unknown customer":
        customer = "cus_gone"
    elif outage == "down":
        fake_stripe.stop()
    else:
        fake_stripe.fail_next(int(outage))
    provider = StripeProvider(key, STRIPE_SECRET, api_base=fake_stripe.url, max_network_retries=0)
    with provider, pytest.raises(ProviderUnavailable, match=message):
        provider.collect(request(provider_customer_id=customer))


def test_stripe_retries_a_500_with_the_same_idempotency_key(fake_stripe: FakeStripe) -> None:
    fake_stripe.fail_next(500)
    with StripeProvider(
        STRIPE_KEY, STRIPE_SECRET, api_base=fake_stripe.url, max_network_retries=1
    ) as provider:
        result = provider.collect(request(provider_customer_id=None))

    assert result.status == "succeeded"
    keys = [r.headers["idempotency-key"] for r in fake_stripe.received]
    assert keys == ["inv_01:1:customer", "inv_01:1:customer", "inv_01:1"]


# -- Stripe: webhooks --------------------------------------------------------------------------


def stripe_event(event_type: str, intent: dict[str, Any] | None = None) -> bytes:
    intent = intent or {
        "id": "pi_123",
        "object": "payment_intent",
        "metadata": {"tallyray_invoice_id": "inv_01"},
        "last_payment_error": {"message": "Your card was declined."},
    }
    event = {
        "id": "evt_123",
        "object": "event",
        "type": event_type,
        "livemode": False,
        "created": NOW_S,
        "data": {"object": intent},
    }
    return json.dumps(event).encode()


OURS = {"tallyray_invoice_id": "inv_01"}
DECLINED = "Your card was declined."
D = Decimal


@pytest.mark.parametrize(
    ("event_type", "metadata", "kind", "failure"),
    [
        ("payment_intent.succeeded", OURS, "payment.succeeded", None),
        ("payment_intent.payment_failed", OURS, "payment.failed", DECLINED),
        ("payment_intent.requires_action", OURS, "ignored", None),
        ("charge.refunded", OURS, "ignored", None),
        ("payment_intent.succeeded", {}, "ignored", None),  # not a payment Tallyray started
    ],
)
def test_stripe_webhook_events(
    stripe_provider: StripeProvider,
    event_type: str,
    metadata: dict[str, str],
    kind: str,
    failure: str | None,
) -> None:
    intent = {
        "id": "pi_123",
        "amount": 1234,
        "amount_received": 1234 if kind == "payment.succeeded" else 0,
        "currency": "eur",
        "metadata": metadata,
        "last_payment_error": {"message": DECLINED},
    }
    body = stripe_event(event_type, intent)
    headers = {"stripe-signature": sign_stripe_payload(body, STRIPE_SECRET, NOW_S)}

    events = stripe_provider.parse_webhook(headers, body, NOW)

    invoice_id = metadata.get("tallyray_invoice_id")
    assert events == [
        ProviderEvent(
            "stripe", "evt_123", kind, False, invoice_id, "pi_123", failure, D("12.34"), "EUR"
        )
    ]


@pytest.mark.parametrize(
    ("event_type", "intent", "amount", "currency"),
    [
        # a success reports what was captured, amount_received, in Stripe's minor units
        ("payment_intent.succeeded", {"amount": 9900, "amount_received": 9900}, "99.00", "EUR"),
        ("payment_intent.succeeded", {"amount": 9900, "amount_received": 5000}, "50.00", "EUR"),
        ("payment_intent.succeeded", {"amount": 9900}, "99.00", "EUR"),  # no amount_received
        ("payment_intent.succeeded", {"amount_received": 50000, "currency": "isk"}, "500", "ISK"),
        ("payment_intent.succeeded", {"amount_received": 1234, "currency": "jpy"}, "1234", "JPY"),
        ("payment_intent.succeeded", {"amount_received": 1230, "currency": "kwd"}, "1.230", "KWD"),
        ("payment_intent.payment_failed", {"amount": 9900, "amount_received": 0}, "99.00", "EUR"),
        ("payment_intent.succeeded", {"amount_received": "9900"}, None, "EUR"),  # not a number
        ("payment_intent.succeeded", {"amount_received": 9900, "currency": None}, None, None),
    ],
)
def test_stripe_webhook_amounts(
    stripe_provider: StripeProvider,
    event_type: str,
    intent: dict[str, Any],
    amount: str | None,
    currency: str | None,
) -> None:
    body = stripe_event(event_type, {"id": "pi_1", "currency": "eur", "metadata": OURS, **intent})
    headers = {"stripe-signature": sign_stripe_payload(body, STRIPE_SECRET, NOW_S)}

    [event] = stripe_provider.parse_webhook(headers, body, NOW)

    assert (event.amount, event.currency) == (None if amount is None else D(amount), currency)


BODY = stripe_event("payment_intent.succeeded")


@pytest.mark.parametrize(
    ("secret", "signed_at", "sent", "message"),
    [
        (STRIPE_SECRET, NOW_S - 301, BODY, "is 301 s old, outside the tolerance of 300 s"),
        (STRIPE_SECRET, NOW_S + 301, BODY, "is 301 s in the future, outside the tolerance"),
        ("whsec_someone_else", NOW_S, BODY, "No signatures found matching"),
        (STRIPE_SECRET, NOW_S, BODY.replace(b"inv_01", b"inv_99"), "No signatures found matching"),
        (STRIPE_SECRET, NOW_S, b"\xff", "the webhook body is not UTF-8 text"),
    ],
)
def test_stripe_webhook_rejected(
    stripe_provider: StripeProvider, secret: str, signed_at: int, sent: bytes, message: str
) -> None:
    headers = {"stripe-signature": sign_stripe_payload(BODY, secret, signed_at)}

    with pytest.raises(SignatureError, match=re.escape(message)):
        stripe_provider.parse_webhook(headers, sent, NOW)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing Stripe-Signature header"),
        ({"stripe-signature": "garbage"}, "Unable to extract timestamp and signatures"),
        ({"stripe-signature": f"t={NOW_S}"}, "No signatures found with expected scheme v1"),
    ],
)
def test_stripe_webhook_header_rejected(
    stripe_provider: StripeProvider, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(SignatureError, match=re.escape(message)):
        stripe_provider.parse_webhook(headers, BODY, NOW)


@pytest.mark.parametrize("age", [-300, 0, 299, 300])
def test_stripe_webhook_within_tolerance(stripe_provider: StripeProvider, age: int) -> None:
    headers = {"stripe-signature": sign_stripe_payload(BODY, STRIPE_SECRET, NOW_S - age)}

    assert stripe_provider.parse_webhook(headers, BODY, NOW)[0].kind == "payment.succeeded"


def test_stripe_webhooks_sent_by_the_fake_verify(
    stripe_provider: StripeProvider, fake_stripe: FakeStripe, inbox: WebhookInbox
) -> None:
    results = [
        stripe_provider.collect(request(invoice_id=f"inv_{i}", payment_method=method))
        for i, method in enumerate(
            ["pm_card_visa", "pm_card_chargeDeclined", "pm_card_authenticationRequired"]
        )
    ]

    deliveries = fake_stripe.wait_for_webhooks(3)
    assert [d.status for d in deliveries] == [200, 200, 200]
    now = time.time_ns() // 1000
    events = [
        e for r in inbox.received for e in stripe_provider.parse_webhook(r.headers, r.body, now)
    ]
    assert [(e.kind, e.invoice_id, e.reference, e.livemode) for e in events] == [
        ("payment.succeeded", "inv_0", results[0].reference, False),
        ("payment.failed", "inv_1", results[1].reference, False),
        ("ignored", "inv_2", results[2].reference, False),  # payment_intent.requires_action
    ]
    assert events[1].failure_message == "Your card was declined."
    assert {r.path for r in inbox.received} == {"/webhooks/stripe"}


# -- Adyen: collecting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored_method", "status", "code", "message"),
    [
        ("8415718415172204", "succeeded", None, None),  # any other id is Authorised
        ("refused", "failed", "refused:2", "Refused"),
        ("insufficient", "failed", "refused:12", "Not enough balance"),
        ("error", "failed", "error:4", "Acquirer Error"),
        ("pending", "pending", None, None),
        ("received", "pending", None, None),
        (None, "failed", "payment_method_missing", "the customer has no stored payment method"),
    ],
)
def test_adyen_outcomes(
    adyen_provider: AdyenProvider,
    stored_method: str | None,
    status: str,
    code: str | None,
    message: str | None,
) -> None:
    result = adyen_provider.collect(request(payment_method=stored_method))

    assert (result.provider, result.status) == ("adyen", status)
    assert (result.failure_code, result.failure_message) == (code, message)
    assert result.provider_customer_id == "cust_01"  # the shopperReference


@pytest.mark.parametrize(
    ("currency", "amount", "value"),
    [
        ("EUR", "12.34", 1234),
        ("JPY", "1234", 1234),
        ("KWD", "1.235", 1235),  # Adyen takes all three decimals
        ("CLP", "1500", 150000),  # two decimals at Adyen, none in ISO 4217
    ],
)
def test_adyen_sends_a_merchant_initiated_payment(
    adyen_provider: AdyenProvider, fake_adyen: FakeAdyen, currency: str, amount: str, value: int
) -> None:
    result = adyen_provider.collect(
        request(currency=currency, amount=Decimal(amount), payment_method="8415718415172204")
    )

    [sent] = fake_adyen.received
    assert re.fullmatch(r"/v\d+/payments", sent.path)
    assert sent.headers["idempotency-key"] == "inv_01:1"
    assert sent.json() == {
        "amount": {"value": value, "currency": currency},
        "reference": "inv_01",
        "merchantAccount": ADYEN_MERCHANT,
        "shopperReference": "cust_01",
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "8415718415172204"},
        "shopperInteraction": "ContAuth",
        "recurringProcessingModel": "UnscheduledCardOnFile",
        "shopperEmail": "ada@example.com",
        "metadata": {"tallyray_invoice_id": "inv_01", "invoice_number": "TR-000042"},
    }
    assert (result.status, result.amount_minor) == ("succeeded", value)
    assert result.reference is not None and len(result.reference) == 16


def test_adyen_same_attempt_charges_once(adyen_provider: AdyenProvider) -> None:
    first = adyen_provider.collect(request())

    assert adyen_provider.collect(request()) == first
    assert adyen_provider.collect(request(attempt=2)).reference != first.reference


@pytest.mark.parametrize(
    ("currency", "amount", "message"),
    [
        ("CVE", "100.50", r"Adyen takes CVE amounts with 0 decimal places"),
        ("ISK", "500", r"Adyen payments in ISK are not supported"),
    ],
)
def test_adyen_refuses_amounts_before_calling_adyen(
    adyen_provider: AdyenProvider, fake_adyen: FakeAdyen, currency: str, amount: str, message: str
) -> None:
    with pytest.raises(ProviderUnavailable, match=message):
        adyen_provider.collect(request(currency=currency, amount=Decimal(amount)))
    assert fake_adyen.received == []


@pytest.mark.parametrize(
    ("outage", "message"),
    [
        (
            "bad key",
            r"Adyen rejected the API key \(HTTP 401\): HTTP Status Response - Unauthorized",
        ),
        ("other merchant", r"Adyen rejected the API key \(HTTP 403\): Invalid Merchant Account"),
        ("500", r"Adyen failed on its side \(HTTP 500\)"),
        ("503", r"Adyen failed on its side \(HTTP 503\)"),
        ("down", r"cannot reach Adyen"),
    ],
)
def test_adyen_unavailable(fake_adyen: FakeAdyen, outage: str, message: str) -> None:
    key, merchant = ADYEN_KEY, ADYEN_MERCHANT
    if outage == "bad key":
        key = "AQE_not_this_one"
    elif outage == "other merchant":
        merchant = "SomeoneElse"
    elif outage == "down":
        fake_adyen.stop()
    else:
        fake_adyen.fail_next(int(outage))
    provider = AdyenProvider(key, merchant, ADYEN_HMAC, api_base=fake_adyen.url)
    with pytest.raises(ProviderUnavailable, match=message):
        provider.collect(request())


# -- Adyen: webhooks ---------------------------------------------------------------------------


PSP = "QFQTPCQ8HXSKGK82"


def item(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "psp_reference": PSP,
        "merchant_reference": "inv_01",
        "value": 1234,
        "currency": "EUR",
        "merchant_account": ADYEN_MERCHANT,
    }
    return notification_item(**{**fields, **changes})


@pytest.mark.parametrize(
    ("event_code", "success", "reason", "kind", "failure"),
    [
        ("AUTHORISATION", True, "", "payment.succeeded", None),
        ("AUTHORISATION", False, "Not enough balance", "payment.failed", "Not enough balance"),
        ("CAPTURE", True, "", "ignored", None),
        ("REFUND", True, "", "ignored", None),
        ("CANCELLATION", True, "", "ignored", None),
    ],
)
def test_adyen_webhook_events(
    adyen_provider: AdyenProvider,
    event_code: str,
    success: bool,
    reason: str,
    kind: str,
    failure: str | None,
) -> None:
    body = signed_notification(
        [item(event_code=event_code, success=success, reason=reason)], ADYEN_HMAC
    )

    [event] = adyen_provider.parse_webhook({}, body, NOW)

    event_id = f"{PSP}:{event_code}:{str(success).lower()}"
    assert event == ProviderEvent(
        "adyen", event_id, kind, False, "inv_01", PSP, failure, D("12.34"), "EUR"
    )


@pytest.mark.parametrize(
    ("value", "currency", "amount"),
    [
        (9900, "EUR", "99.00"),
        (1234, "JPY", "1234"),  # zero-decimal
        (1235, "KWD", "1.235"),  # Adyen takes all three decimals
        (150000, "CLP", "1500"),  # two decimals at Adyen: 150000 is 1500.00 pesos
        (150050, "CLP", "1500.50"),  # kept exactly; the invoice match refuses the 50 centavos
    ],
)
def test_adyen_webhook_amounts(
    adyen_provider: AdyenProvider, value: int, currency: str, amount: str
) -> None:
    body = signed_notification([item(value=value, currency=currency)], ADYEN_HMAC)

    [event] = adyen_provider.parse_webhook({}, body, NOW)

    assert (event.amount, event.currency) == (D(amount), currency)


def test_adyen_webhook_batch_from_live() -> None:
    provider = AdyenProvider(
        ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, live=True, live_endpoint_prefix="x"
    )
    items = [item(), item(psp_reference="SECOND0000000002", merchant_reference="inv_02")]
    body = signed_notification(items, ADYEN_HMAC, live=True)

    events = provider.parse_webhook({}, body, NOW)

    assert [(e.livemode, e.invoice_id, e.reference) for e in events] == [
        (True, "inv_01", PSP),
        (True, "inv_02", "SECOND0000000002"),
    ]


def tampered(body: bytes, index: int = 0, **fields: Any) -> bytes:
    notification = json.loads(body)
    notification["notificationItems"][index]["NotificationRequestItem"].update(fields)
    return json.dumps(notification).encode()


SIGNED = signed_notification([item(), item(psp_reference="SECOND0000000002")], ADYEN_HMAC)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (signed_notification([item()], "00" * 32), "[0]: the HMAC signature does not match"),
        (tampered(SIGNED, amount={"value": 1, "currency": "EUR"}), "[0]: the HMAC signature"),
        (tampered(SIGNED, 1, success="false"), "[1]: the HMAC signature does not match"),
        (tampered(SIGNED, additionalData={}), "[0] has no additionalData.hmacSignature"),
        (tampered(SIGNED, 1, additionalData={"hmacSignature": ""}), "[1] has no additionalData"),
        (tampered(SIGNED, amount=None), "[0] lacks the fields its signature covers"),
        (b"[accepted]", "not an Adyen notification"),
        (b'{"live": "false"}', "not an Adyen notification"),
    ],
)
def test_adyen_webhook_rejected(adyen_provider: AdyenProvider, body: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=re.escape(message)):
        adyen_provider.parse_webhook({}, body, NOW)


def test_adyen_webhooks_sent_by_the_fake_verify(
    adyen_provider: AdyenProvider, fake_adyen: FakeAdyen, inbox: WebhookInbox
) -> None:
    paid = adyen_provider.collect(request(invoice_id="inv_paid"))
    refused = adyen_provider.collect(request(invoice_id="inv_refused", payment_method="refused"))

    assert [d.status for d in fake_adyen.wait_for_webhooks(2)] == [200, 200]
    events = [
        e for r in inbox.received for e in adyen_provider.parse_webhook(r.headers, r.body, NOW)
    ]
    assert [(e.kind, e.invoice_id, e.reference, e.failure_message) for e in events] == [
        ("payment.succeeded", "inv_paid", paid.reference, None),
        ("payment.failed", "inv_refused", refused.reference, "Refused"),
    ]


# -- manual ------------------------------------------------------------------------------------


def test_manual_provider_leaves_the_invoice_pending() -> None:
    provider = ManualProvider()

    result = provider.collect(REQUEST)

    assert result.to_json() == {
        "provider": "manual",
        "status": "pending",
        "reference": "TR-000042",
        "provider_customer_id": None,
        "amount_minor": None,
        "failure_code": None,
        "failure_message": None,
    }
    with pytest.raises(SignatureError, match="the manual provider has no webhooks"):
        provider.parse_webhook({}, b"{}", NOW)


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "wheres"),
    [
        (lambda: StripeProvider("", STRIPE_SECRET), ["api_key"]),
        (
            lambda: StripeProvider(STRIPE_KEY, " ", tolerance_seconds=0),
            ["webhook_secret", "tolerance_seconds"],
        ),
        (lambda: AdyenProvider(ADYEN_KEY, "", ADYEN_HMAC), ["merchant_account"]),
        (lambda: AdyenProvider(ADYEN_KEY, ADYEN_MERCHANT, "not-hex"), ["hmac_key"]),
        (
            lambda: AdyenProvider(ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, live=True),
            ["live_endpoint_prefix"],
        ),
        (lambda: StripeProvider("pk_test_x", STRIPE_SECRET), ["api_key"]),  # publishable
        (lambda: StripeProvider("sk_live_x", STRIPE_SECRET), ["api_key"]),  # test mode
        (lambda: StripeProvider("rk_test_x", STRIPE_SECRET, live=True), ["api_key"]),
        (
            lambda: StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base="http://stripe-mock:12111"),
            ["api_base"],
        ),
    ],
)
def test_providers_refuse_incomplete_settings(build: Any, wheres: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        build()
    assert [p.where for p in raised.value.problems] == wheres


# -- modes: live credentials for live payments, test ones for test payments --------------------


@pytest.mark.parametrize(
    ("key", "live", "problem"),
    [
        ("sk_live_abc", True, None),
        ("rk_live_abc", True, None),
        ("sk_test_abc", False, None),
        ("rk_test_abc", False, None),
        ("sk_test_abc", True, "is a test-mode key (sk_test_...) but is used for live payments"),
        ("rk_live_abc", False, "is a live-mode key (rk_live_...) but is used for test payments"),
        ("pk_live_abc", True, "is not a Stripe secret or restricted key (pk_live_...)"),
        ("whsec_abc", False, "is not a Stripe secret or restricted key (whsec_...)"),
        ("AQEabc", False, "is not a Stripe secret or restricted key (?...)"),  # shows nothing
    ],
)
def test_stripe_takes_only_keys_of_its_mode(key: str, live: bool, problem: str | None) -> None:
    if problem is None:
        with StripeProvider(key, STRIPE_SECRET, live=live) as provider:
            assert provider.livemode is live
        return
    with pytest.raises(ConfigError) as raised:
        StripeProvider(key, STRIPE_SECRET, live=live)
    [found] = raised.value.problems
    assert found.where == "api_key" and found.message.startswith(problem)


def test_a_live_stripe_key_makes_live_objects_and_events(inbox: WebhookInbox) -> None:
    with (
        FakeStripe("sk_live_tallyray", webhook_url=inbox.url, webhook_secret="whsec_live") as fake,
        StripeProvider(
            "sk_live_tallyray", "whsec_live", api_base=fake.url, live=True, max_network_retries=0
        ) as provider,
    ):
        result = provider.collect(request())
        [delivery] = fake.wait_for_webhooks(1)
        [event] = provider.parse_webhook(
            inbox.received[0].headers, inbox.received[0].body, time.time_ns() // 1000
        )

    assert delivery.status == 200
    assert fake.payment_intents[str(result.reference)]["livemode"] is True
    assert (event.kind, event.livemode, event.amount, event.currency) == (
        "payment.succeeded",
        True,
        D("12.34"),
        "EUR",
    )


PREFIX = "1797a841fbb37ca7-AdyenDemo"
LIVE_CHECKOUT = f"https://{PREFIX}-checkout-live.adyenpayments.com/checkout"


@pytest.mark.parametrize(
    ("live", "api_base", "endpoint"),
    [
        # Where the SDK really posts, for its platform (this pins its URL rewriting)
        (False, None, "https://checkout-test.adyen.com/v72/payments"),
        (True, None, f"{LIVE_CHECKOUT}/v72/payments"),
        (False, "https://checkout-test.adyen.com", "https://checkout-test.adyen.com/v72/payments"),
        (True, LIVE_CHECKOUT, f"{LIVE_CHECKOUT}/v72/payments"),
        (False, "http://127.0.0.1:9/", "http://127.0.0.1:9/v72/payments"),  # a local fake
        (True, "http://localhost:9", "http://localhost:9/v72/payments"),
        (True, "http://[::1]:9", "http://[::1]:9/v72/payments"),
    ],
)
def test_adyen_sends_each_mode_to_its_own_platform(
    live: bool, api_base: str | None, endpoint: str
) -> None:
    provider = AdyenProvider(
        ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, api_base, live, live_endpoint_prefix=PREFIX
    )

    assert (provider.endpoint, provider.livemode) == (endpoint, live)


@pytest.mark.parametrize(
    ("live", "api_base", "message"),
    [
        # the test platform's host for live payments: the SDK would quietly make it live
        (True, "https://checkout-test.adyen.com", "points at checkout-test.adyen.com: live-mode"),
        # a live host for test payments: the SDK would quietly turn -live into -test
        (False, LIVE_CHECKOUT, f"points at {PREFIX.lower()}-checkout-live.adyenpayments.com: "),
        # the live host without its /checkout path
        (True, LIVE_CHECKOUT.removesuffix("/checkout"), "would send live-mode payments to"),
        (True, "http://adyen-mock:8080", "points at adyen-mock: live-mode calls go to"),
        (False, "ftp://127.0.0.1", "must be an http:// or https:// URL"),
    ],
)
def test_adyen_refuses_endpoints_of_the_other_mode(live: bool, api_base: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        AdyenProvider(
            ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, api_base, live, live_endpoint_prefix=PREFIX
        )
    [problem] = raised.value.problems
    assert problem.where == "api_base" and problem.message.startswith(message)


@pytest.mark.parametrize(
    "prefix", [f"https://{PREFIX}-checkout-live.adyenpayments.com", f"{PREFIX}.adyen", " "]
)
def test_adyen_live_url_prefix_is_the_prefix_alone(prefix: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as raised:
        AdyenProvider(ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, live=True, live_endpoint_prefix=prefix)
    assert [p.where for p in raised.value.problems] == ["live_endpoint_prefix"]


# -- the fakes as an operator runs them --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "request_args", "answer"),
    [
        (
            ["stripe", "--api-key", "sk_test_local", "--webhook-secret", "whsec_local"],
            ("/v1/customers", {"Authorization": "Bearer sk_test_local"}, None),
            (200, "cus_"),
        ),
        (
            ["adyen", "--api-key", "AQE_test_local", "--merchant-account", "LocalTest"],
            (
                "/v71/sessions",
                {"X-API-Key": "AQE_test_local"},
                {
                    "merchantAccount": "LocalTest",
                    "amount": {"value": 2500, "currency": "EUR"},
                    "reference": "pur_local",
                    "returnUrl": "http://127.0.0.1:8000/back",
                    "mode": "hosted",
                },
            ),
            (201, "CS"),
        ),
    ],
    ids=["stripe", "adyen"],
)
def test_python_m_fakes_serves_a_provider_until_stopped(
    argv: list[str], request_args: tuple[str, dict[str, str], Any], answer: tuple[int, str]
) -> None:
    """``python -m fakes …`` (docs/payments.md, "Test mode end to end") prints its URL and
    answers in the provider's wire format until it is stopped."""
    tests = Path(__file__).resolve().parents[1]
    with subprocess.Popen(
        [sys.executable, "-m", "fakes", *argv, "--port", "0"],
        cwd=tests,
        stdout=subprocess.PIPE,
        text=True,
    ) as fake:
        try:
            assert fake.stdout is not None
            url = fake.stdout.readline().split(" serving on ")[1].strip()
            path, headers, body = request_args
            r = httpx.post(url + path, headers=headers, json=body, timeout=10)
            assert (r.status_code, r.json()["id"][: len(answer[1])]) == answer, r.text
        finally:
            fake.send_signal(signal.SIGTERM)
        assert fake.wait(timeout=10) == 0
