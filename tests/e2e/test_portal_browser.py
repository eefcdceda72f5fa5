"""The customer portal in a real headless browser: Debian's Chromium driven by Playwright,
against a real `tallyray serve` subprocess (Ray + Serve, SQLite in a temporary directory).

JavaScript is switched off in the browser: the portal must work without it. Screenshots are
saved to ``tests/e2e/artifacts/portal-<page>.png`` (a test artifact, not committed).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.adyen_server import FakeAdyen
from fakes.stripe_server import FakeStripe
from served import tallyray_serve

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
ADMIN_KEY = "trk_admin_" + uuid.uuid4().hex

pytestmark = [
    pytest.mark.e2e,
    # CI installs Chromium and sets TALLYRAY_REQUIRE_BROWSER, so there the test never skips.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("TALLYRAY_REQUIRE_BROWSER"),
        reason="Debian's Chromium is not installed at /usr/bin/chromium "
        "(apt-get install -y chromium)",
    ),
]


STRIPE_TEST_KEY = "sk_test_portal"
STRIPE_TEST_SECRET = "whsec_portal"
ADYEN_TEST_KEY = "AQE_test_portal"
ADYEN_MERCHANT = "TallyrayPortalTest"
ADYEN_TEST_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"


@pytest.fixture(scope="module")
def stripe_fake() -> Iterator[FakeStripe]:
    """A local Stripe in test mode: the server's test-environment credentials point at it
    (Add credit pays on its hosted page; it posts signed webhooks to the server)."""
    with FakeStripe(STRIPE_TEST_KEY, webhook_secret=STRIPE_TEST_SECRET) as fake:
        yield fake


@pytest.fixture(scope="module")
def adyen_fake() -> Iterator[FakeAdyen]:
    """A local Adyen on its test platform, as :func:`stripe_fake`."""
    with FakeAdyen(ADYEN_TEST_KEY, ADYEN_MERCHANT, hmac_key=ADYEN_TEST_HMAC) as fake:
        yield fake


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory, stripe_fake: FakeStripe, adyen_fake: FakeAdyen
) -> Iterator[str]:
    """The server with test-mode credentials only, each pointed at its local fake: an
    operator's way to try the money path without real cards (docs/payments.md)."""
    test_mode_providers = {
        "TALLYRAY_STRIPE_TEST_API_KEY": STRIPE_TEST_KEY,
        "TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": STRIPE_TEST_SECRET,
        "TALLYRAY_STRIPE_TEST_API_BASE": stripe_fake.url,
        "TALLYRAY_ADYEN_TEST_API_KEY": ADYEN_TEST_KEY,
        "TALLYRAY_ADYEN_TEST_MERCHANT_ACCOUNT": ADYEN_MERCHANT,
        "TALLYRAY_ADYEN_TEST_HMAC_KEY": ADYEN_TEST_HMAC,
        "TALLYRAY_ADYEN_TEST_API_BASE": adyen_fake.url,
    }
    with tallyray_serve(
        tmp_path_factory.mktemp("portal-serve"), ADMIN_KEY, test_mode_providers
    ) as base:
        stripe_fake.webhook_url = f"{base}/v1/providers/stripe/webhook"
        adyen_fake.webhook_url = f"{base}/v1/providers/adyen/webhook"
        yield base


@pytest.fixture(scope="module")
def portal_url(base_url: str) -> str:
    """A customer with 10.00 of credits and ten calls, and a portal link for it."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post(
            "/v1/admin/keys", json={"env": "test"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert r.status_code == 201, r.text
        http.headers["Authorization"] = f"Bearer {r.json()['key']}"
        customer = {"id": "acme", "name": "Acme AI", "currency": "EUR", "locale": "en"}
        assert http.post("/v1/customers", json=customer).status_code == 201
        r = http.post("/v1/subscriptions", json={"customer_id": "acme", "plan": "pro"})
        assert r.status_code == 201, r.text
        r = http.post("/v1/customers/acme/credits", json={"amount": "10.00"})
        assert r.status_code == 201, r.text
        events = [
            {
                "id": f"e{i}",
                "customer_id": "acme",
                "type": "llm.completion",
                "properties": {
                    "model": "gpt-4o" if i % 3 else "gpt-4o-mini",
                    "input_tokens": 1000,
                    "output_tokens": 100,
                },
            }
            for i in range(10)
        ]
        assert http.post("/v1/events", json=events).json() == {"ingested": 10, "duplicates": 0}
        r = http.post("/v1/portal-sessions", json={"customer_id": "acme"})
        assert r.status_code == 201, (
            f"POST /v1/portal-sessions answered {r.status_code}: are the portal routes wired "
            f"into build_app? {r.text}"
        )
        return f"{base_url}{r.json()['url']}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page with JavaScript off; console errors (a CSP violation, say) fail the test, but
    for Chromium's note on a page answered with an error status the test asked for."""
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1024, "height": 800}, locale="en-US"
    )
    page = context.new_page()
    errors: list[str] = []
    expected = "Failed to load resource: the server responded with a status of"

    def on_console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith(expected):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == []


def follow(page: Any, control: Any) -> None:
    """Click a link or a form's button and wait for the page it leads to. Playwright's click
    does not wait for the navigation it starts, so a check made right after it can still see
    the page before (a test failed that way in CI)."""
    with page.expect_navigation():
        control.click()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"portal-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


def test_the_overview_shows_the_balance(page: Any, portal_url: str) -> None:
    response = page.goto(portal_url)
    assert response.status == 200
    # gpt-4o: 6 × (1,000 × 0.0000025 + 100 × 0.00001) = 0.021; gpt-4o-mini: 4,000 input
    # tokens in the free tier + 4 × 100 × 0.0000006 = 0.00024; 10 requests: one package of
    # 1,000 at 2.00 → spend 2.02124 → 2.02; credits 10 − 2.02124 = 7.97876 → 7.98
    assert page.locator("#credits-remaining").inner_text() == "€7.98"
    assert page.locator("#period-spend").inner_text() == "€2.02"
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert page.title().startswith("Overview · Acme AI")
    shot(page, "overview")


def test_create_an_alert_and_see_it_listed(page: Any, portal_url: str) -> None:
    page.goto(portal_url)
    page.get_by_role("link", name="Alerts").click()
    page.wait_for_url(f"{portal_url}/alerts")
    assert page.get_by_text("You have no alerts.").is_visible()
    # Every control is found by its label: the form is labelled for assistive technology.
    page.get_by_label("When").select_option("balance_below")
    page.get_by_label("Threshold").fill("5")
    page.get_by_label("Name (optional)").fill("Running low")
    page.get_by_role("button", name="Add alert").click()
    page.wait_for_url(f"{portal_url}/alerts?done=alert-added")
    assert page.get_by_role("status").inner_text() == "Alert added."
    row = page.locator("#alert-rules tbody tr", has_text="Running low")
    assert row.count() == 1
    assert "Available balance below €5.00" in row.inner_text()
    shot(page, "alerts")


def test_a_bad_threshold_is_reported_next_to_its_field(page: Any, portal_url: str) -> None:
    page.goto(f"{portal_url}/alerts")
    page.get_by_label("When").select_option("spend_above")
    page.get_by_label("Threshold").fill("a lot")
    page.get_by_role("button", name="Add alert").click()
    assert " ".join(page.locator("#threshold-error").inner_text().split()) == (
        "Error: Enter a number such as 100.00."
    )
    assert page.get_by_label("Threshold").get_attribute("aria-invalid") == "true"
    shot(page, "alerts-error")


def test_usage_charts_and_invoices_render(page: Any, portal_url: str) -> None:
    page.goto(f"{portal_url}/usage")
    charts = page.locator("figure.chart svg[role=img]")
    assert charts.count() == 3  # input_tokens, output_tokens (by model), requests
    assert page.locator("ul.legend li", has_text="gpt-4o-mini").count() == 2
    shot(page, "usage")
    follow(page, page.get_by_role("link", name="Invoices"))
    assert page.url == f"{portal_url}/invoices"
    assert page.get_by_text("You have no invoices yet.").is_visible()


def test_a_tampered_link_gets_a_401_page(page: Any, portal_url: str) -> None:
    response = page.goto(portal_url[:-2] + ("AA" if not portal_url.endswith("AA") else "BB"))
    assert response.status == 401
    assert page.get_by_role("heading", name="This link is not valid").is_visible()


@pytest.fixture(scope="module")
def capped(base_url: str) -> tuple[str, httpx.Client]:
    """A postpaid customer whose operator set a credit limit of 50.00, its portal link, and
    an API client of its environment."""
    http = httpx.Client(base_url=base_url, timeout=30)
    r = http.post(
        "/v1/admin/keys", json={"env": "test"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    http.headers["Authorization"] = f"Bearer {r.json()['key']}"
    customer = {
        "id": "capped",
        "name": "Capped Ltd",
        "currency": "EUR",
        "locale": "en",
        "billing_mode": "postpaid",
        "credit_limit": "50.00",
    }
    assert http.post("/v1/customers", json=customer).status_code == 201
    r = http.post("/v1/portal-sessions", json={"customer_id": "capped"})
    assert r.status_code == 201, r.text
    return f"{base_url}{r.json()['url']}", http


def test_the_customer_sets_its_own_cap_and_never_the_operators_limit(
    page: Any, capped: tuple[str, httpx.Client]
) -> None:
    url, http = capped
    page.goto(url)
    assert "Your provider's credit limit is €50.00 per period" in page.inner_text(
        "#credit-limit-current"
    )
    assert "No spend cap is set." in page.inner_text("#spend-cap-current")

    # a cap above the operator's limit is saved, and the limit still applies first
    page.get_by_label("Spend cap per period (EUR)").fill("80")
    follow(page, page.get_by_role("button", name="Save spend cap"))
    assert "Spend cap saved." in page.content()
    assert "€80.00" in page.inner_text("#spend-cap-current")
    assert "it applies before your cap" in page.inner_text("#credit-limit-current")
    shot(page, "spend-cap")
    balance = http.get("/v1/customers/capped/balance").json()
    assert (balance["credit_limit"], balance["spend_cap"], balance["spend_limit"]) == (
        "50.00",
        "80.00",
        "50.00",
    )

    # a lower cap binds; removing it leaves the operator's limit as it was
    page.get_by_label("Spend cap per period (EUR)").fill("20")
    follow(page, page.get_by_role("button", name="Save spend cap"))
    assert http.get("/v1/customers/capped/balance").json()["spend_limit"] == "20.00"
    follow(page, page.get_by_role("button", name="Remove spend cap"))
    assert "No spend cap is set." in page.inner_text("#spend-cap-current")
    record = http.get("/v1/customers/capped").json()
    assert (record["credit_limit"], record["spend_cap"], record["spend_limit"]) == (
        "50.00",
        None,
        "50.00",
    )
    http.close()


@pytest.fixture(scope="module")
def limited(base_url: str) -> str:
    """A customer on a plan with a unit limit (1,000 output tokens a day) and a feature it
    leaves out (gpt-4o); 600 tokens used today, 100 reserved. Its portal link."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post(
            "/v1/admin/keys",
            json={"env": "test"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        http.headers["Authorization"] = f"Bearer {r.json()['key']}"
        plan = {
            "key": "limited",
            "name": "Limited",
            "currency": "EUR",
            "interval": "month",
            "charges": [{"meter": "output_tokens", "model": "per_unit", "unit_amount": "0.00001"}],
            "limits": [{"meter": "output_tokens", "limit": 1000, "window": "day"}],
            "entitlements": [
                {"feature": "models.gpt-4o", "match": {"model": "gpt-4o"}, "allowed": False}
            ],
        }
        assert http.post("/v1/plans", json=plan).status_code == 201
        customer = {"id": "limited-co", "name": "Limited Co", "currency": "EUR", "locale": "en"}
        assert http.post("/v1/customers", json=customer).status_code == 201
        r = http.post("/v1/subscriptions", json={"customer_id": "limited-co", "plan": "limited"})
        assert r.status_code == 201, r.text
        assert http.post("/v1/customers/limited-co/credits", json={"amount": "5.00"}).is_success
        call = {"model": "gpt-4o-mini", "input_tokens": 0, "output_tokens": 600}
        event = {"id": "l1", "customer_id": "limited-co", "type": "llm.completion"}
        r = http.post("/v1/events", json=[{**event, "properties": call}])
        assert r.json() == {"ingested": 1, "duplicates": 0}
        would_be = {"type": "llm.completion", "properties": {**call, "output_tokens": 100}}
        r = http.post("/v1/reservations", json={"customer_id": "limited-co", "event": would_be})
        assert r.status_code == 201, r.text
        r = http.post("/v1/portal-sessions", json={"customer_id": "limited-co"})
        assert r.status_code == 201, r.text
        return f"{base_url}{r.json()['url']}"


def test_the_overview_shows_the_plan_limits(page: Any, limited: str) -> None:
    page.goto(limited)
    assert page.get_by_role("heading", name="Plan limits").is_visible()
    table = page.get_by_role(
        "table", name="Usage limits of your plan, in units, and when each resets"
    )
    headers = [h.inner_text() for h in table.locator("thead th").all()]
    assert headers == ["Usage", "Window", "Used", "Limit", "Remaining", "Resets"]
    row = table.get_by_role("row", name="output_tokens")
    cells = [" ".join(c.inner_text().split()) for c in row.locator("th, td").all()]
    # 600 used + 100 reserved of 1,000: 300 remain until the next 00:00 UTC
    assert cells[:5] == ["output_tokens", "per day", "600 + 100 reserved", "1,000", "300"]
    assert cells[5].endswith("12:00:00 AM UTC")
    assert row.locator("time").get_attribute("datetime").endswith("T00:00:00Z")
    features = page.locator("#plan-features li")
    assert [" ".join(f.inner_text().split()) for f in features.all()] == [
        "models.gpt-4o: not included"
    ]
    shot(page, "plan-limits")


@contextlib.contextmanager
def portal_of(base_url: str, customer: dict[str, Any]) -> Iterator[tuple[str, httpx.Client]]:
    """A test-mode customer made over the API, its portal link, and the API client."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post(
            "/v1/admin/keys", json={"env": "test"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        http.headers["Authorization"] = f"Bearer {r.json()['key']}"
        assert http.post("/v1/customers", json=customer).status_code == 201
        r = http.post("/v1/portal-sessions", json={"customer_id": customer["id"]})
        assert r.status_code == 201, r.text
        yield f"{base_url}{r.json()['url']}", http


def paying(customer_id: str, name: str, provider: str) -> dict[str, Any]:
    """A German customer billed in EUR who pays through ``provider``."""
    return {
        "id": customer_id,
        "name": name,
        "currency": "EUR",
        "locale": "en",
        "country": "DE",
        "payment_provider": provider,
    }


@pytest.fixture(scope="module")
def buyer(base_url: str) -> Iterator[tuple[str, httpx.Client]]:
    """A customer who pays through Stripe (test mode), its portal link, and an API client."""
    with portal_of(base_url, paying("globex", "Globex", "stripe")) as found:
        yield found


def test_add_credit_on_the_providers_page_and_see_it_after_the_webhook(
    page: Any, buyer: tuple[str, httpx.Client], stripe_fake: FakeStripe
) -> None:
    url, http = buyer
    page.goto(url)
    assert page.locator("#credits-remaining").inner_text() == "€0.00"
    page.get_by_role("link", name="Add credit").click()
    page.wait_for_url(f"{url}/credit")
    page.get_by_label("Amount in EUR").fill("25")
    follow(page, page.get_by_role("button", name="Continue"))
    shot(page, "add-credit")
    follow(page, page.get_by_role("link", name="Continue to payment"))

    # Stripe's hosted page (the local fake); the provider confirms only later.
    stripe_fake.hold_webhooks()
    assert page.get_by_role("heading", name="Pay 25.00 EUR").is_visible()
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(f"{url}/credit/returned?*")
    returned = page.url
    assert "waiting for the payment provider to confirm" in page.inner_text("#top-up-status")
    page.goto(url)
    assert page.locator("#credits-remaining").inner_text() == "€0.00"  # coming back is no proof

    stripe_fake.release_webhooks()  # the signed webhooks reach the server
    deliveries = stripe_fake.wait_for_webhooks(2, timeout=30)
    assert [d.status for d in deliveries] == [200, 200]
    page.goto(returned)
    assert "€25.00 was added to your credit" in page.inner_text("#top-up-status")
    shot(page, "credit-added")
    page.goto(url)
    assert page.locator("#credits-remaining").inner_text() == "€25.00"
    (top_up,) = http.get("/v1/customers/globex/top-ups").json()["top_ups"]
    assert (top_up["status"], top_up["receipt"]["number"]) == ("paid", "RCT-000001")


@pytest.fixture(scope="module")
def adyen_buyer(base_url: str) -> Iterator[tuple[str, httpx.Client]]:
    """A customer who pays through Adyen (test mode)."""
    with portal_of(base_url, paying("initech", "Initech", "adyen")) as found:
        yield found


def test_add_credit_on_adyens_page_declined_then_paid_and_booked_by_the_notification(
    page: Any, adyen_buyer: tuple[str, httpx.Client], adyen_fake: FakeAdyen
) -> None:
    url, http = adyen_buyer
    page.goto(f"{url}/credit")
    page.get_by_label("Amount in EUR").fill("30")
    follow(page, page.get_by_role("button", name="Continue"))
    follow(page, page.get_by_role("link", name="Continue to payment"))

    # Adyen's hosted page (the local fake): refused first, then authorised.
    adyen_fake.hold_webhooks()
    assert page.get_by_role("heading", name="Pay 3000 EUR (minor units)").is_visible()
    page.get_by_label("Card number").fill("4111 1111 4555 1142")
    page.get_by_label("Name on card").fill("DECLINED")
    page.get_by_role("button", name="Pay").click()
    assert page.locator("#card-error").inner_text() == "Refused"
    page.get_by_label("Card number").fill("4111 1111 4555 1142")
    page.get_by_label("Name on card").fill("Ada Lovelace")
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(f"{url}/credit/returned?*")  # Adyen adds sessionId and sessionResult
    returned = page.url
    assert "waiting for the payment provider to confirm" in page.inner_text("#top-up-status")
    (pending,) = http.get("/v1/customers/initech/top-ups").json()["top_ups"]
    assert pending["status"] == "pending"  # coming back is no proof

    adyen_fake.release_webhooks()  # the refusal, then the authorisation, HMAC-signed
    deliveries = adyen_fake.wait_for_webhooks(2, timeout=30)
    assert [d.status for d in deliveries] == [200, 200]
    page.goto(returned)
    assert "€30.00 was added to your credit" in page.inner_text("#top-up-status")
    shot(page, "adyen-credit-added")
    page.goto(url)
    assert page.locator("#credits-remaining").inner_text() == "€30.00"
    (top_up,) = http.get("/v1/customers/initech/top-ups").json()["top_ups"]
    assert (top_up["status"], top_up["provider"]) == ("paid", "adyen")
    assert top_up["receipt"]["number"].startswith("RCT-")


def test_save_a_card_on_adyens_page_and_see_it_after_the_notification(
    page: Any, adyen_buyer: tuple[str, httpx.Client], adyen_fake: FakeAdyen
) -> None:
    url, http = adyen_buyer
    seen = len(adyen_fake.webhooks)
    page.goto(f"{url}/payment")
    assert page.locator("#no-cards").is_visible()
    page.get_by_role("button", name="Add a card").click()
    page.get_by_role("link", name="Continue to Adyen to enter your card").click()
    page.wait_for_url(f"{adyen_fake.url}/checkoutshopper/*")  # Adyen's own page
    assert page.get_by_role("heading", name="Pay 0 EUR (minor units)").is_visible()
    page.get_by_label("Card number").fill("5555 4444 3333 1111")  # Adyen's test Mastercard
    page.get_by_label("Name on card").fill("Ada Lovelace")
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(f"{url}/payment?done=card-pending*")
    assert page.get_by_text("once the payment provider confirms it").is_visible()

    # The zero-value AUTHORISATION (ignored) and RECURRING_CONTRACT (saves the card).
    deliveries = adyen_fake.wait_for_webhooks(seen + 2, timeout=30)[seen:]
    assert [d.status for d in deliveries] == [200, 200]
    page.goto(f"{url}/payment")
    assert page.locator("#saved-cards tbody th").all_inner_texts() == [
        "Mastercard ending 1111 (used for payments)"
    ]
    shot(page, "adyen-card-saved")
    (card,) = http.get("/v1/customers/initech/payment-methods").json()["payment_methods"]
    assert (card["provider"], card["last4"], card["default"]) == ("adyen", "1111", True)
