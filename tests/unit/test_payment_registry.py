"""Each environment's payment providers: a test invoice never meets live credentials, and a
webhook belongs to the environment whose secret verifies it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from fakes.adyen_server import notification_item, signed_notification
from fakes.stripe_server import sign_stripe_payload

from tallyray.errors import ConfigError, Conflict, SignatureError, WebhookRefused
from tallyray.invoicing.payments import (
    AdyenProvider,
    ManualProvider,
    PaymentProviders,
    StripeProvider,
)

LIVE_SECRET, TEST_SECRET = "whsec_live", "whsec_test"
LIVE_HMAC, TEST_HMAC = "11" * 32, "22" * 32
NOW_S = 1_760_000_000
NOW = NOW_S * 1_000_000


@pytest.fixture(autouse=True)
def _no_stripe_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "enable_telemetry", False)


@pytest.fixture
def providers() -> Iterator[PaymentProviders]:
    both = PaymentProviders(
        live={
            "stripe": StripeProvider("sk_live_x", LIVE_SECRET, live=True),
            "adyen": AdyenProvider(
                "AQE_live", "Tallyray", LIVE_HMAC, live=True, live_endpoint_prefix="p"
            ),
        },
        test={
            "stripe": StripeProvider("sk_test_x", TEST_SECRET),
            "adyen": AdyenProvider("AQE_test", "Tallyray", TEST_HMAC),
        },
    )
    yield both
    both.close()


def test_each_environment_has_its_own_providers(providers: PaymentProviders) -> None:
    assert providers.get("live", "stripe").livemode is True
    assert providers.get("test", "stripe").livemode is False
    assert providers.get("live", "adyen").livemode is True
    assert providers.get("test", "adyen").livemode is False
    assert isinstance(providers.get("live", "manual"), ManualProvider)
    assert isinstance(providers.get("test", "manual"), ManualProvider)


def test_a_provider_missing_in_one_environment_is_not_borrowed_from_the_other() -> None:
    live_only = PaymentProviders(live={"stripe": StripeProvider("sk_live_x", "s", live=True)})

    assert live_only.names("test") == ["manual"]
    with pytest.raises(Conflict, match="stripe is not configured for the test environment"):
        live_only.get("test", "stripe")
    with pytest.raises(Conflict, match=r"adyen is not configured for the live environment"):
        live_only.get("live", "adyen")


@pytest.mark.parametrize(
    ("live", "test", "problems"),
    [
        # a provider with test-mode credentials cannot serve the live environment
        ({"stripe": StripeProvider("sk_test_x", "s")}, {}, ["live.stripe"]),
        ({}, {"adyen": AdyenProvider("k", "m", "aa", live=True, live_endpoint_prefix="p")},
         ["test.adyen"]),
        ({"adyen": StripeProvider("sk_live_x", "s", live=True)}, {}, ["live.adyen"]),  # wrong name
    ],
)  # fmt: skip
def test_a_provider_of_the_other_mode_is_refused(
    live: dict[str, Any], test: dict[str, Any], problems: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        PaymentProviders(live=live, test=test)
    assert [p.where for p in raised.value.problems] == problems


def test_with_provider_adds_to_one_environment_only() -> None:
    providers = PaymentProviders().with_provider("test", StripeProvider("sk_test_x", "s"))

    assert (providers.names("live"), providers.names("test")) == (
        ["manual"],
        ["manual", "stripe"],
    )


# -- webhooks: the environment whose secret verifies, and events of its mode only ------------


def stripe_delivery(secret: str, livemode: Any) -> tuple[dict[str, str], bytes]:
    event = {
        "id": "evt_1",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_1", "metadata": {"tallyray_invoice_id": "inv_1"}}},
    }
    if livemode is not None:
        event["livemode"] = livemode
    body = json.dumps(event).encode()
    return {"stripe-signature": sign_stripe_payload(body, secret, NOW_S)}, body


@pytest.mark.parametrize(
    ("secret", "livemode", "env", "error"),
    [
        (LIVE_SECRET, True, "live", None),
        (TEST_SECRET, False, "test", None),
        # signed with the test secret, claiming live: whoever knows the test secret must not
        # reach live invoices
        (TEST_SECRET, True, None, "is a live-mode event but is signed with the test environ"),
        (LIVE_SECRET, False, None, "is a test-mode event but is signed with the live environ"),
        (TEST_SECRET, None, None, "does not say whether it is live or test"),
        ("whsec_other", False, None, "No signatures .* secret of each environment: live, test"),
    ],
)
def test_a_stripe_webhook_belongs_to_the_environment_whose_secret_verifies_it(
    providers: PaymentProviders, secret: str, livemode: Any, env: str | None, error: str | None
) -> None:
    headers, body = stripe_delivery(secret, livemode)
    if error is None:
        found, [event] = providers.parse_webhook("stripe", headers, body, NOW)
        assert (found, event.livemode) == (env, env == "live")
        return
    with pytest.raises(SignatureError if "No sig" in error else WebhookRefused, match=error):
        providers.parse_webhook("stripe", headers, body, NOW)


def test_a_live_event_is_refused_where_only_test_credentials_exist() -> None:
    test_only = PaymentProviders(test={"stripe": StripeProvider("sk_test_x", TEST_SECRET)})
    headers, body = stripe_delivery(LIVE_SECRET, True)

    with pytest.raises(SignatureError, match="No signatures found matching"):
        test_only.parse_webhook("stripe", headers, body, NOW)


@pytest.mark.parametrize(
    ("hmac_key", "live", "env", "error"),
    [
        (LIVE_HMAC, True, "live", None),
        (TEST_HMAC, False, "test", None),
        (TEST_HMAC, True, None, "is a live-mode event but is signed with the test environment"),
        (LIVE_HMAC, False, None, "is a test-mode event but is signed with the live environment"),
        ("33" * 32, False, None, "the HMAC signature does not match"),
    ],
)
def test_an_adyen_notification_belongs_to_the_environment_whose_key_verifies_it(
    providers: PaymentProviders, hmac_key: str, live: bool, env: str | None, error: str | None
) -> None:
    item = notification_item(
        psp_reference="PSP1", merchant_reference="inv_1", value=100, currency="EUR"
    )
    body = signed_notification([item], hmac_key, live=live)
    if error is None:
        found, [event] = providers.parse_webhook("adyen", {}, body, NOW)
        assert (found, event.livemode) == (env, live)
        return
    with pytest.raises(SignatureError if "HMAC" in error else WebhookRefused, match=error):
        providers.parse_webhook("adyen", {}, body, NOW)


def test_webhooks_of_unconfigured_providers() -> None:
    with pytest.raises(Conflict, match="payment provider 'stripe' is not configured"):
        PaymentProviders().parse_webhook("stripe", {}, b"{}", NOW)
    with pytest.raises(SignatureError, match="^the manual provider has no webhooks$"):
        PaymentProviders().parse_webhook("manual", {}, b"{}", NOW)


def test_a_webhook_that_fails_differently_in_each_environment_says_both(
    providers: PaymentProviders,
) -> None:
    event = {"id": "evt_1", "type": "charge.refunded", "livemode": False, "data": {"object": {}}}
    body = json.dumps(event).encode()
    headers = {"stripe-signature": sign_stripe_payload(body, TEST_SECRET, NOW_S - 301)}

    with pytest.raises(SignatureError) as raised:
        providers.parse_webhook("stripe", headers, body, NOW)
    assert raised.value.message == (
        "the stripe webhook verifies with no environment's secret: live: Stripe-Signature does "
        "not verify: No signatures found matching the expected signature for payload; test: "
        "Stripe-Signature timestamp 1759999699 is 301 s old, outside the tolerance of 300 s"
    )
