"""The payment settings are checked before the server starts: each environment gets its own
credentials, of its own mode, and a mistake names the variable to fix."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tallyray.cli import EXIT_BAD_INPUT, main
from tallyray.cluster.providers import check_payment_settings, payment_providers
from tallyray.cluster.settings import Settings
from tallyray.errors import ConfigError

HMAC_LIVE, HMAC_TEST = "AA" * 32, "BB" * 32
PREFIX = "1797a841fbb37ca7-AdyenDemo"

STRIPE_LIVE = {"stripe_api_key": "sk_live_abc", "stripe_webhook_secret": "whsec_live"}
STRIPE_TEST = {"stripe_test_api_key": "sk_test_abc", "stripe_test_webhook_secret": "whsec_test"}
ADYEN_LIVE = {
    "adyen_api_key": "AQE_live",
    "adyen_merchant_account": "Tallyray",
    "adyen_hmac_key": HMAC_LIVE,
    "adyen_live_url_prefix": PREFIX,
}
ADYEN_TEST = {
    "adyen_test_api_key": "AQE_test",
    "adyen_test_merchant_account": "Tallyray",
    "adyen_test_hmac_key": HMAC_TEST,
}
EVERYTHING = {**STRIPE_LIVE, **STRIPE_TEST, **ADYEN_LIVE, **ADYEN_TEST}
LIVE_CHECKOUT = f"https://{PREFIX}-checkout-live.adyenpayments.com/checkout"
M, MS, AM = ["manual"], ["manual", "stripe"], ["adyen", "manual"]  # providers of an env


@pytest.fixture(autouse=True)
def _no_stripe_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "enable_telemetry", False)


@pytest.mark.parametrize(
    ("values", "live", "test"),
    [
        ({}, M, M),
        (STRIPE_LIVE, MS, M),  # test has no stripe, not live's
        (STRIPE_TEST, M, MS),
        (EVERYTHING, ["adyen", "manual", "stripe"], ["adyen", "manual", "stripe"]),
        ({**STRIPE_LIVE, "stripe_api_key": "rk_live_abc"}, MS, M),
        ({**STRIPE_TEST, "stripe_test_api_key": "rk_test_abc"}, M, MS),
        # local fakes, for either mode
        ({**STRIPE_LIVE, "stripe_api_base": "http://127.0.0.1:12111"}, MS, M),
        ({**ADYEN_TEST, "adyen_test_api_base": "http://localhost:8080"}, M, AM),
        ({**ADYEN_LIVE, "adyen_api_base": "http://[::1]:8080"}, AM, M),
        # the providers' own hosts
        ({**STRIPE_TEST, "stripe_test_api_base": "https://api.stripe.com"}, M, MS),
        ({**ADYEN_TEST, "adyen_test_api_base": "https://checkout-test.adyen.com"}, M, AM),
        ({**ADYEN_LIVE, "adyen_api_base": LIVE_CHECKOUT}, AM, M),
        # an API base alone turns nothing on
        ({"stripe_test_api_base": "http://127.0.0.1:1"}, M, M),
        # the same merchant account in both modes is how Adyen names them
        ({**ADYEN_LIVE, **ADYEN_TEST}, AM, AM),
    ],
)  # fmt: skip
def test_good_settings(values: dict[str, str], live: list[str], test: list[str]) -> None:
    providers = payment_providers(Settings(**values))

    assert (providers.names("live"), providers.names("test")) == (live, test)
    check_payment_settings(Settings(**values))
    providers.close()


@pytest.mark.parametrize(
    ("values", "problems"),
    [
        # Stripe: a key of the other mode, in either direction
        ({**STRIPE_LIVE, "stripe_api_key": "sk_test_abc"},
         {"TALLYRAY_STRIPE_API_KEY": "is a test-mode key (sk_test_...) but is used for live "
          "payments: use a live-mode key, sk_live_... or rk_live_...; a test-mode key belongs "
          "in TALLYRAY_STRIPE_TEST_API_KEY"}),
        ({**STRIPE_TEST, "stripe_test_api_key": "rk_live_abc"},
         {"TALLYRAY_STRIPE_TEST_API_KEY": "is a live-mode key (rk_live_...) but is used for "
          "test payments: use a test-mode key, sk_test_... or rk_test_...; a live-mode key "
          "belongs in TALLYRAY_STRIPE_API_KEY"}),
        ({**STRIPE_LIVE, "stripe_api_key": "pk_live_abc"},
         {"TALLYRAY_STRIPE_API_KEY": "is not a Stripe secret or restricted key (pk_live_...): "
          "use a live-mode key, sk_live_... or rk_live_..."}),
        # half a set of credentials
        ({"stripe_api_key": "sk_live_abc"},
         {"TALLYRAY_STRIPE_WEBHOOK_SECRET": "is empty: use the endpoint's signing secret, "
          "whsec_..."}),
        ({"stripe_test_webhook_secret": "whsec_test"},
         {"TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": "is set but TALLYRAY_STRIPE_TEST_API_KEY is "
          "not: without a key, stripe is off for the test environment"}),
        ({"adyen_live_url_prefix": PREFIX},
         {"TALLYRAY_ADYEN_LIVE_URL_PREFIX": "is set but TALLYRAY_ADYEN_API_KEY is not: without "
          "a key, adyen is off for the live environment"}),
        ({**ADYEN_TEST, "adyen_test_merchant_account": None, "adyen_test_hmac_key": "xyz"},
         {"TALLYRAY_ADYEN_TEST_MERCHANT_ACCOUNT": "is empty",
          "TALLYRAY_ADYEN_TEST_HMAC_KEY": "must be the webhook's HMAC key, in hexadecimal as "
          "Adyen shows it"}),
        # Adyen live needs its URL prefix, the prefix alone
        ({**ADYEN_LIVE, "adyen_live_url_prefix": None},
         {"TALLYRAY_ADYEN_LIVE_URL_PREFIX": "is needed for live payments: Customer Area > "
          "Developers > API URLs"}),
        ({**ADYEN_LIVE, "adyen_live_url_prefix": f"https://{PREFIX}-checkout-live.adyenpayments.com"},
         {"TALLYRAY_ADYEN_LIVE_URL_PREFIX": "must be the prefix alone, like "
          "1797a841fbb37ca7-AdyenDemo (no https://, no host name): Customer Area > Developers "
          "> API URLs"}),
        # an override must not move one mode's calls to the other's endpoints ...
        ({**ADYEN_LIVE, "adyen_api_base": "https://checkout-test.adyen.com"},
         {"TALLYRAY_ADYEN_API_BASE": "points at checkout-test.adyen.com: live-mode calls go to "
          f"https://{PREFIX}-checkout-live.adyenpayments.com/checkout, and an override may only "
          "point there or at a local fake (127.0.0.1, ::1 or localhost)"}),
        ({**ADYEN_TEST, "adyen_test_api_base": LIVE_CHECKOUT},
         {"TALLYRAY_ADYEN_TEST_API_BASE": f"points at {PREFIX.lower()}-checkout-live."
          "adyenpayments.com: test-mode calls go to https://checkout-test.adyen.com, and an "
          "override may only point there or at a local fake (127.0.0.1, ::1 or localhost)"}),
        # ... nor anywhere else that is not a fake on this machine
        ({**STRIPE_LIVE, "stripe_api_base": "http://stripe-mock:12111"},
         {"TALLYRAY_STRIPE_API_BASE": "points at stripe-mock: live-mode calls go to "
          "https://api.stripe.com, and an override may only point there or at a local fake "
          "(127.0.0.1, ::1 or localhost)"}),
        ({**STRIPE_TEST, "stripe_test_api_base": "http://10.1.2.3:12111"},
         {"TALLYRAY_STRIPE_TEST_API_BASE": "points at 10.1.2.3: test-mode calls go to "
          "https://api.stripe.com, and an override may only point there or at a local fake "
          "(127.0.0.1, ::1 or localhost)"}),
        # one secret for both modes could not tell a live delivery from a test one
        ({**STRIPE_LIVE, **STRIPE_TEST, "stripe_test_webhook_secret": "whsec_live"},
         {"TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": "is the same as TALLYRAY_STRIPE_WEBHOOK_SECRET: "
          "each mode's webhook endpoint has its own signing secret, and the secret is what "
          "tells a live delivery from a test one"}),
        ({**ADYEN_LIVE, **ADYEN_TEST, "adyen_test_hmac_key": HMAC_LIVE.lower()},
         {"TALLYRAY_ADYEN_TEST_HMAC_KEY": "is the same as TALLYRAY_ADYEN_HMAC_KEY: each mode's "
          "webhook has its own HMAC key, and the key is what tells a live notification from a "
          "test one"}),
        ({**ADYEN_LIVE, **ADYEN_TEST, "adyen_test_api_key": "AQE_live"},
         {"TALLYRAY_ADYEN_TEST_API_KEY": "is the same as TALLYRAY_ADYEN_API_KEY: Adyen's test "
          "and live platforms have separate keys"}),
    ],
)  # fmt: skip
def test_bad_settings_stop_the_server_naming_the_variable(
    values: dict[str, Any], problems: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        check_payment_settings(Settings(**values))

    assert {p.where: p.message for p in raised.value.problems} == problems


def test_every_problem_is_reported_at_once() -> None:
    values = {**EVERYTHING, "stripe_api_key": "sk_test_abc", "adyen_live_url_prefix": None}

    with pytest.raises(ConfigError) as raised:
        check_payment_settings(Settings(**values))

    assert [p.where for p in raised.value.problems] == [
        "TALLYRAY_STRIPE_API_KEY",
        "TALLYRAY_ADYEN_LIVE_URL_PREFIX",
    ]


def test_the_variables_reach_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {
        "TALLYRAY_STRIPE_API_KEY": "sk_live_abc",
        "TALLYRAY_STRIPE_WEBHOOK_SECRET": "whsec_live",
        "TALLYRAY_STRIPE_TEST_API_KEY": "sk_test_abc",
        "TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": "whsec_test",
        "TALLYRAY_STRIPE_TEST_API_BASE": "http://127.0.0.1:1",
        "TALLYRAY_ADYEN_API_KEY": "AQE_live",
        "TALLYRAY_ADYEN_MERCHANT_ACCOUNT": "Tallyray",
        "TALLYRAY_ADYEN_HMAC_KEY": HMAC_LIVE,
        "TALLYRAY_ADYEN_LIVE_URL_PREFIX": PREFIX,
        "TALLYRAY_ADYEN_TEST_API_KEY": "AQE_test",
        "TALLYRAY_ADYEN_TEST_MERCHANT_ACCOUNT": "TallyrayTest",
        "TALLYRAY_ADYEN_TEST_HMAC_KEY": HMAC_TEST,
        "TALLYRAY_ADYEN_TEST_API_BASE": "http://127.0.0.1:2",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    settings = Settings.load()

    assert {v: getattr(settings, Settings.ENV[v]) for v in variables} == variables
    providers = payment_providers(settings)
    assert providers.get("test", "stripe").livemode is False
    assert providers.get("live", "adyen").livemode is True
    providers.close()


def test_serve_refuses_to_start_with_a_test_key_in_the_live_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check comes before the port, the store and Ray (which unit tests may not start)."""
    monkeypatch.setattr("tallyray.cluster.server.configure_logging", lambda: None)
    for name in Settings.ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TALLYRAY_STRIPE_API_KEY", "sk_test_abc")
    monkeypatch.setenv("TALLYRAY_STRIPE_WEBHOOK_SECRET", "whsec_x")

    assert main(["serve"]) == EXIT_BAD_INPUT

    err = capsys.readouterr().err
    assert "tallyray serve: invalid configuration: 1 problem" in err
    assert "TALLYRAY_STRIPE_API_KEY: is a test-mode key (sk_test_...)" in err
