"""Where a provider's calls may go: its own host for its mode, or a fake on this machine."""

from __future__ import annotations

import pytest

from tallyray.invoicing.payments.endpoints import is_local, is_under, override_problem

STRIPE = "https://api.stripe.com"


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.8.9.10", True),  # all of 127/8 is loopback
        ("http://localhost:1/v1", True),
        ("http://[::1]:12111", True),
        ("https://api.stripe.com", False),
        ("http://10.0.0.5:12111", False),  # a private address is another machine
        ("http://localhost.example.com", False),
        ("http://127.0.0.1.nip.io", False),  # resolves to loopback, but only through DNS
        ("not a url", False),
    ],
)
def test_is_local(url: str, local: bool) -> None:
    assert is_local(url) is local


@pytest.mark.parametrize(
    ("url", "base", "under"),
    [
        ("https://x-checkout-live.adyenpayments.com/checkout/v72/payments",
         "https://x-checkout-live.adyenpayments.com/checkout", True),
        ("https://X-Checkout-Live.adyenpayments.com/checkout/v72",
         "https://x-checkout-live.adyenpayments.com/checkout", True),  # hosts ignore case
        ("https://x-checkout-live.adyenpayments.com/v72/payments",
         "https://x-checkout-live.adyenpayments.com/checkout", False),  # outside the path
        ("https://x-checkout-live.adyenpayments.com/checkoutx/v72",
         "https://x-checkout-live.adyenpayments.com/checkout", False),
        ("http://checkout-test.adyen.com/v72", "https://checkout-test.adyen.com", False),
        ("https://checkout-test.adyen.com:8443/v72", "https://checkout-test.adyen.com", False),
    ],
)  # fmt: skip
def test_is_under(url: str, base: str, under: bool) -> None:
    assert is_under(url, base) is under


@pytest.mark.parametrize(
    ("api_base", "problem"),
    [
        ("https://api.stripe.com", None),
        ("https://api.stripe.com/", None),
        ("http://127.0.0.1:12111", None),  # a local fake
        ("http://localhost:12111", None),
        ("http://api.stripe.com", "points at api.stripe.com"),  # not over TLS
        ("https://stripe-mock:12111", "points at stripe-mock: live-mode calls go to"),
        ("https://api.stripe.com.evil.example", "points at api.stripe.com.evil.example"),
        ("api.stripe.com", "must be an http:// or https:// URL"),
    ],
)
def test_override_problem(api_base: str, problem: str | None) -> None:
    found = override_problem(api_base, STRIPE, "live")
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)
