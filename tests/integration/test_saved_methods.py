"""Saved payment methods end to end, on each store: the API starts the provider's own page,
the customer saves a card there (the local Stripe and Adyen fakes, driven over HTTP as a
browser would), the provider's signed webhook saves it in Tallyray, and it can be replaced
and removed. The official SDKs talk to the fakes; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import stripe
import uvicorn
from fakes import LocalServer, WebhookInbox
from fakes.adyen_server import FakeAdyen
from fakes.stripe_server import FakeStripe
from suite_clock import CLOCK
from support import POSTGRES_URL, Server, create_postgres_database, drop_postgres_database, unique

from tallyray.actors.shard import ShardActor
from tallyray.cluster import Settings, prepare_store
from tallyray.invoicing.payments import AdyenProvider, StripeProvider
from tallyray.invoicing.service import Billing
from tallyray.serve.api import Services
from tallyray.serve.app import build_app
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import NAMESPACE, ShardRouter
from tallyray.storage.billing import BillingStore
from tallyray.storage.keys import KeyStore

pytestmark = pytest.mark.anyio

STRIPE_KEY = "sk_test_tallyray"
STRIPE_SECRET = "whsec_tallyray_test"
ADYEN_KEY = "AQE_test_tallyray"
ADYEN_MERCHANT = "TallyrayTest"
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
BACK = "https://shop.example/billing"


@dataclass
class Shop:
    client: httpx.AsyncClient
    billing: Billing
    stripe: FakeStripe
    adyen: FakeAdyen
    forwarded: dict[int, int]
    app: Any

    async def customer(self, provider: str, **fields: Any) -> str:
        customer = unique("cust")
        doc = {"id": customer, "currency": "EUR", "payment_provider": provider, **fields}
        r = await self.client.post("/v1/customers", json=doc)
        assert r.status_code == 201, r.text
        return customer

    async def forward(self, fake: LocalServer, provider: str, count: int) -> list[int]:
        """Deliver the fake's next ``count`` webhooks to the app, as the provider would;
        the ``processed`` of each (Adyen's answer is ``[accepted]``: the cards saved)."""
        start = self.forwarded.get(id(fake), 0)
        deliveries = await asyncio.to_thread(fake.wait_for_webhooks, start + count)
        self.forwarded[id(fake)] = start + count
        processed = []
        for delivery in deliveries[start:]:
            r = await self.client.post(
                f"/v1/providers/{provider}/webhook",
                content=delivery.body,
                headers={k: v for k, v in delivery.headers.items() if k != "Content-Length"},
            )
            assert r.status_code == 200, r.text
            if provider == "adyen":
                assert r.text == "[accepted]"
                processed.append(len(await self.all_methods()))
            else:
                processed.append(r.json()["processed"])
        return processed

    async def all_methods(self) -> list[Any]:
        return await asyncio.to_thread(_all_methods, self.billing)

    async def methods(self, customer: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/v1/customers/{customer}/payment-methods")
        assert r.status_code == 200, r.text
        return list(r.json()["payment_methods"])


def _all_methods(billing: Billing) -> list[Any]:
    from sqlalchemy import select

    from tallyray.storage import tables as t

    with billing.store.engine.connect() as conn:
        return list(conn.execute(select(t.payment_methods.c.id)).all())


def fill_in(url: str, **form: str) -> httpx.Response:
    """The customer on the provider's page: open it, type the card, submit."""
    with httpx.Client(timeout=10) as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        return browser.post(url, data=form)


@pytest.fixture(scope="module")
async def shop(server: Server, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shop]:
    stripe.enable_telemetry = False
    if server.store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('methods')}/methods.db"
    settings = Settings.load(database_url=url, shards=1, config_path=server.settings.config_path)
    catalog = prepare_store(settings)
    shard = (
        ray.remote(ShardActor)
        .options(name=unique("methods-shard"), namespace=NAMESPACE, max_restarts=-1)
        .remote(0, 1, url, 0.5, 86_400, 0.0, CLOCK.offset_us)
    )
    await shard.ready.remote()
    router = ShardRouter(1, lambda i: shard)
    billing = Billing(
        catalog=catalog,
        store=BillingStore(catalog.engine),
        database_url=url,
        router=router,
        clock=CLOCK,
    )
    with (
        WebhookInbox() as inbox,
        FakeStripe(STRIPE_KEY, webhook_url=inbox.url, webhook_secret=STRIPE_SECRET) as fake_stripe,
        FakeAdyen(
            ADYEN_KEY, ADYEN_MERCHANT, webhook_url=inbox.url, hmac_key=ADYEN_HMAC
        ) as fake_adyen,
    ):
        billing.providers = billing.providers.with_provider(
            "test", StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=fake_stripe.url)
        ).with_provider(
            "test", AdyenProvider(ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, api_base=fake_adyen.url)
        )
        services = Services(
            catalog=catalog, router=router, rules=IntakeRules(), billing=billing, clock=CLOCK
        )
        app = build_app(services)
        _, key = KeyStore(catalog.engine).create("test", CLOCK())
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://tallyray.test",
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            ) as client:
                yield Shop(client, billing, fake_stripe, fake_adyen, {}, app)
        finally:
            billing.providers.close()
            ray.kill(shard, no_restart=True)
            catalog.engine.dispose()
            if server.store == "postgres" and POSTGRES_URL is not None:
                drop_postgres_database(POSTGRES_URL, url)


async def setup(shop: Shop, customer: str, **body: Any) -> dict[str, Any]:
    r = await shop.client.post(
        f"/v1/customers/{customer}/payment-methods/setup",
        json={"success_url": f"{BACK}?saved=1", "cancel_url": BACK, **body},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_a_stripe_card_is_saved_replaced_and_removed(shop: Shop) -> None:
    customer = await shop.customer("stripe", email="ada@example.com")
    started = await setup(shop, customer)
    assert started["url"].startswith(shop.stripe.url)

    # Coming back from the page saves nothing: only the signed webhook does.
    back = fill_in(started["url"], card_number="4242 4242 4242 4242", action="save")
    assert (back.status_code, back.headers["location"]) == (303, f"{BACK}?saved=1")
    assert await shop.methods(customer) == []
    # setup_intent.succeeded saves it (checkout.session.completed is not for us); twice is once.
    assert await shop.forward(shop.stripe, "stripe", 2) == [1, 0]
    (visa,) = await shop.methods(customer)
    assert (visa["brand"], visa["last4"], visa["exp_month"], visa["exp_year"]) == (
        "visa",
        "4242",
        12,
        2030,
    )
    assert visa["default"] and visa["reference"].startswith("pm_")
    record = shop.billing.catalog.customer("test", customer)
    assert record.billing["payment_method"] == visa["reference"]  # what charges use
    assert record.billing["provider_customer_id"].startswith("cus_")
    delivered = shop.stripe.wait_for_webhooks(shop.forwarded[id(shop.stripe)])
    r = await shop.client.post(
        "/v1/providers/stripe/webhook",
        content=delivered[-2].body,
        headers={"Stripe-Signature": delivered[-2].headers["Stripe-Signature"]},
    )
    assert r.json()["processed"] == 0  # the provider's retry of the same event

    # Replace: a new card through the same page, the old one goes.
    started = await setup(shop, customer, replaces=visa["id"])
    fill_in(started["url"], card_number="5555555555554444", action="save")
    await shop.forward(shop.stripe, "stripe", 2)
    (mastercard,) = await shop.methods(customer)
    assert (mastercard["brand"], mastercard["last4"], mastercard["default"]) == (
        "mastercard",
        "4444",
        True,
    )
    assert (
        shop.billing.catalog.customer("test", customer).billing["payment_method"]
        == (mastercard["reference"])
    )

    # A declined card is not saved, and says so on the provider's page.
    started = await setup(shop, customer)
    page = fill_in(started["url"], card_number="4000000000000002", action="save")
    assert "declined" in page.text

    # Remove: forgotten here, detached at Stripe, and nothing left to charge.
    r = await shop.client.delete(f"/v1/customers/{customer}/payment-methods/{mastercard['id']}")
    assert r.status_code == 200, r.text
    assert await shop.methods(customer) == []
    assert shop.stripe.payment_methods[mastercard["reference"]]["customer"] is None
    assert "payment_method" not in shop.billing.catalog.customer("test", customer).billing
    r = await shop.client.delete(f"/v1/customers/{customer}/payment-methods/{mastercard['id']}")
    assert r.status_code == 404


async def test_an_adyen_card_is_saved_from_its_recurring_contract(shop: Shop) -> None:
    customer = await shop.customer("adyen")
    started = await setup(shop, customer)
    session = shop.adyen.sessions[started["url"].rsplit("/", 1)[1]]
    assert (session["amount"]["value"], session["storePaymentMethod"]) == (0, True)
    back = fill_in(started["url"], card_number="5555444433331111", holder_name="Ada")
    assert back.status_code == 303
    # AUTHORISATION (zero-value check: ignored), then RECURRING_CONTRACT (saves the card).
    before = len(await shop.all_methods())
    assert await shop.forward(shop.adyen, "adyen", 2) == [before, before + 1]
    (card,) = await shop.methods(customer)
    assert (card["brand"], card["last4"], card["exp_month"], card["exp_year"]) == (
        "mc",
        "1111",
        3,
        2030,
    )
    assert card["reference"] in shop.adyen.stored_cards
    r = await shop.client.delete(f"/v1/customers/{customer}/payment-methods/{card['id']}")
    assert r.status_code == 200, r.text
    assert card["reference"] not in shop.adyen.stored_cards


@pytest.mark.parametrize(
    ("provider", "body", "status", "says"),
    [
        ("manual", {"success_url": BACK, "cancel_url": BACK}, 409, "cannot save a card"),
        ("stripe", {"success_url": "ftp://x", "cancel_url": BACK}, 422, "success_url"),
        ("stripe", {"success_url": BACK}, 422, "cancel_url"),
        (
            "stripe",
            {"success_url": BACK, "cancel_url": BACK, "replaces": "pm_nope"},
            404,
            "pm_nope",
        ),
    ],
)
async def test_a_setup_that_cannot_start_says_why(
    shop: Shop, provider: str, body: dict[str, Any], status: int, says: str
) -> None:
    customer = await shop.customer(provider)
    r = await shop.client.post(f"/v1/customers/{customer}/payment-methods/setup", json=body)
    assert r.status_code == status, r.text
    assert says in r.text


# -- the portal's Payment page, in Chromium ----------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """The app on 127.0.0.1 (a free port), from a thread, for the browser."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def browse(portal: str, steps: Callable[[Any], None]) -> None:
    """Run ``steps`` on a Chromium page with JavaScript off (the portal needs none)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        try:
            context = chromium.new_context(java_script_enabled=False, locale="en-US")
            page = context.new_page()
            page.goto(portal)
            steps(page)
        finally:
            chromium.close()


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("TALLYRAY_REQUIRE_BROWSER"),
    reason="Debian's Chromium is not installed at /usr/bin/chromium",
)
async def test_the_portal_saves_a_card_on_stripes_page_and_sets_auto_recharge(shop: Shop) -> None:
    customer = await shop.customer("stripe", name="Acme AI")
    r = await shop.client.post("/v1/portal-sessions", json={"customer_id": customer})
    assert r.status_code == 201, r.text
    with served(shop.app) as site:
        portal = f"{site}{r.json()['url']}"

        def add_a_card(page: Any) -> None:
            page.get_by_role("link", name="Payment").click()
            assert page.locator("#no-cards").is_visible()
            page.get_by_role("button", name="Add a card").click()
            page.wait_for_url(f"{shop.stripe.url}/pay/*")  # Stripe's own page
            page.get_by_label("Card number").fill("4242 4242 4242 4242")
            page.get_by_role("button", name="Save card").click()
            page.wait_for_url(f"{portal}/payment?done=card-pending")
            assert page.get_by_text("once the payment provider confirms it").is_visible()

        await asyncio.to_thread(browse, portal, add_a_card)
        await shop.forward(shop.stripe, "stripe", 2)  # setup_intent.succeeded: saved

        def see_it_and_turn_on_auto_recharge(page: Any) -> None:
            page.goto(f"{portal}/payment")
            assert page.locator("#saved-cards").inner_text().count("Visa ending 4242") == 1
            page.get_by_label("Recharge automatically").check()
            page.get_by_label("When the available balance falls below (EUR)").fill("5")
            page.get_by_label("Add this much credit (EUR)").fill("20")
            page.get_by_label("At most this much a month (EUR)").fill("10")
            page.get_by_role("button", name="Save auto-recharge").click()
            assert page.get_by_text("must be at least the amount").first.is_visible()
            page.get_by_label("At most this much a month (EUR)").fill("60")
            page.get_by_role("button", name="Save auto-recharge").click()
            page.wait_for_url(f"{portal}/payment?done=recharge-saved")
            assert "€20.00 is charged to your card" in page.locator("#recharge-state").inner_text()

        await asyncio.to_thread(browse, portal, see_it_and_turn_on_auto_recharge)
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert (settings["enabled"], settings["threshold"], settings["amount"]) == (True, "5", "20")
    assert settings["monthly_cap"] == "60"
