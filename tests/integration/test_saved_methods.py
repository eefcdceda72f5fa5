"""Saved payment methods and auto-recharge end to end, on each store.

Saved methods: the API starts the provider's own page, the customer saves a card there (the
local Stripe and Adyen fakes, driven over HTTP as a browser would, and in Chromium through the
portal), the provider's signed webhook saves it in Tallyray, and it can be replaced and removed.

Auto-recharge: a stream of events crosses a prepaid customer's threshold, the shard writes the
crossing, sweeps (two "replicas" at once) charge the saved card off session through the credit
purchases core, and the fake's signed webhook books the credit. The official SDKs talk to the
fakes; nothing leaves 127.0.0.1. One store, shard and pair of fakes per module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from support import (
    POSTGRES_URL,
    Server,
    create_postgres_database,
    drop_postgres_database,
    killed_and_back,
    unique,
)

from tallyray.actors.shard import ShardActor
from tallyray.cluster import Settings, prepare_store
from tallyray.cluster.wiring import seed_config
from tallyray.invoicing.payments import AdyenProvider, StripeProvider
from tallyray.invoicing.purchases import grant_id_of
from tallyray.invoicing.recharge import AutoRecharges
from tallyray.invoicing.service import Billing
from tallyray.pricing.recharge_rules import purchase_id_of
from tallyray.serve.api import Services
from tallyray.serve.app import build_app
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import NAMESPACE, ShardRouter
from tallyray.storage.alerts import AlertStore
from tallyray.storage.billing import BillingStore
from tallyray.storage.keys import KeyStore
from tallyray.storage.recharges import RechargeStore

pytestmark = pytest.mark.anyio

STRIPE_KEY = "sk_test_tallyray"
STRIPE_SECRET = "whsec_tallyray_test"
ADYEN_KEY = "AQE_test_tallyray"
ADYEN_MERCHANT = "TallyrayTest"
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
BACK = "https://shop.example/billing"


class ProjectClock:
    """The suite's clock, which a test can move on (auto-recharge's retries are hours apart)."""

    def __init__(self) -> None:
        self.ahead = 0

    def __call__(self) -> int:
        return CLOCK() + self.ahead


@dataclass
class Shop:
    client: httpx.AsyncClient
    billing: Billing
    stripe: FakeStripe
    adyen: FakeAdyen
    forwarded: dict[int, int]
    app: Any
    shard: Any
    clock: ProjectClock
    config_path: str

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
    config = server.settings.config_path
    assert config is not None
    settings = Settings.load(database_url=url, shards=1, config_path=config)
    catalog = prepare_store(settings)
    shard = (
        ray.remote(ShardActor)
        .options(name=unique("methods-shard"), namespace=NAMESPACE, max_restarts=-1)
        .remote(0, 1, url, 0.5, 86_400, 0.0, CLOCK.offset_us)
    )
    await shard.ready.remote()
    router = ShardRouter(1, lambda i: shard)
    clock = ProjectClock()
    billing = Billing(
        catalog=catalog,
        store=BillingStore(catalog.engine),
        database_url=url,
        router=router,
        clock=clock,
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
                yield Shop(client, billing, fake_stripe, fake_adyen, {}, app, shard, clock, config)
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


async def save_card(shop: Shop, customer: str, number: str) -> dict[str, Any]:
    """The customer saves a card on Stripe's page; Stripe's signed webhook saves it here."""
    started = await setup(shop, customer)
    fill_in(started["url"], card_number=number, action="save")
    await shop.forward(shop.stripe, "stripe", 2)
    return (await shop.methods(customer))[0]  # the newest is the default, listed first


def disabled_of(shop: Shop, customer: str) -> list[dict[str, Any]]:
    """The customer's ``recharge.disabled`` outbox messages."""
    found = AlertStore(shop.billing.store.engine).messages("test", "recharge.disabled", 500)
    return [m for m in found if m["data"]["customer_id"] == customer]


RECHARGE = {"enabled": True, "threshold": "5", "amount": "50", "monthly_cap": "120"}


async def test_removing_the_last_card_turns_auto_recharge_off(shop: Shop) -> None:
    customer = await shop.customer("stripe", name="Acme AI")
    visa = await save_card(shop, customer, "4242424242424242")
    mastercard = await save_card(shop, customer, "5555555555554444")
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 200, r.text

    # One card of two goes: the other is charged now, and auto-recharge stays on.
    r = await shop.client.delete(f"/v1/customers/{customer}/payment-methods/{mastercard['id']}")
    assert r.status_code == 200, r.text
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert (settings["enabled"], settings["disabled_reason"]) == (True, None)
    assert messages(shop, customer) == []

    # The last one goes: nothing is left to charge, so auto-recharge is off with it.
    r = await shop.client.delete(
        f"/v1/customers/{customer}/payment-methods/{visa['id']}",
        headers={"X-Request-Id": "remove-last-card"},
    )
    assert r.status_code == 200, r.text
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert settings["enabled"] is False
    assert settings["disabled_reason"] == "turned off: the last saved payment method was removed"
    kept = (settings["threshold"], settings["amount"], settings["monthly_cap"])
    assert kept == ("5", "50", "120")  # kept, to turn on again with a new card
    (disabled,) = disabled_of(shop, customer)
    assert disabled["data"] == {
        "customer_id": customer,
        "crossing": None,
        "amount": "50",
        "currency": "EUR",
        "reason": "turned off: the last saved payment method was removed",
        "code": "no_payment_method",
    }
    r = await shop.client.get("/v1/audit-events", params={"object_id": customer})
    assert r.status_code == 200, r.text
    (audited,) = [e for e in r.json()["events"] if e["action"] == "auto_recharge.disabled"]
    assert audited["request_id"] == "remove-last-card"  # in the removal's transaction
    assert audited["summary"]["code"] == "no_payment_method"

    # It cannot be turned on again without a card; saving it off is fine.
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 409, r.text
    assert "add a card first" in r.json()["error"]["message"]
    r = await shop.client.put(
        f"/v1/customers/{customer}/auto-recharge", json={**RECHARGE, "enabled": False}
    )
    assert r.status_code == 200, r.text
    # A new card, and it can be turned on again.
    await save_card(shop, customer, "4242424242424242")
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is True


async def test_clearing_the_payment_method_by_a_customer_update_turns_auto_recharge_off(
    shop: Shop,
) -> None:
    """The same rule as removing the last card, whichever way the method goes."""
    customer = await shop.customer("stripe", payment_method="pm_card_visa")
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 200, r.text
    mine = {"id": customer, "currency": "EUR"}

    # An update that leaves the method (or sets another) leaves auto-recharge on.
    for change in ({"name": "Acme AI"}, {"payment_method": "pm_card_mastercard"}):
        r = await shop.client.post("/v1/customers", json={**mine, **change})
        assert r.status_code == 201, r.text
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert (settings["enabled"], settings["disabled_reason"]) == (True, None)

    r = await shop.client.post(
        "/v1/customers",
        json={**mine, "payment_method": None},
        headers={"X-Request-Id": "clear-the-method"},
    )
    assert r.status_code == 201, r.text
    assert "payment_method" not in r.json()
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    reason = "turned off: the customer's payment method was cleared"
    assert (settings["enabled"], settings["disabled_reason"]) == (False, reason)
    (disabled,) = disabled_of(shop, customer)
    assert (disabled["data"]["code"], disabled["data"]["reason"]) == ("no_payment_method", reason)
    r = await shop.client.get("/v1/audit-events", params={"object_id": customer})
    (audited,) = [e for e in r.json()["events"] if e["action"] == "auto_recharge.disabled"]
    assert audited["request_id"] == "clear-the-method"  # in the update's transaction
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 409, r.text


async def test_a_restart_reloading_the_config_keeps_the_saved_method_and_auto_recharge(
    shop: Shop, tmp_path: Path
) -> None:
    """The config file's customers are updated in the fields the file gives: a restart
    neither forgets the card saved since nor turns auto-recharge off."""
    customer = unique("cust")
    config = json.loads(Path(shop.config_path).read_text(encoding="utf-8"))
    entry = {"id": customer, "currency": "EUR", "name": "Acme AI", "payment_provider": "stripe"}
    config["customers"] = [entry]
    path = tmp_path / "tallyray.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    catalog = shop.billing.catalog
    await asyncio.to_thread(seed_config, catalog, str(path), CLOCK())  # the first start
    await save_card(shop, customer, "4242424242424242")
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 200, r.text

    await asyncio.to_thread(seed_config, catalog, str(path), CLOCK())  # a restart
    record = await asyncio.to_thread(catalog.customer, "test", customer)
    assert record.billing["payment_method"].startswith("pm_")
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert settings["enabled"] is True


async def test_removing_the_last_card_with_auto_recharge_off_announces_nothing(
    shop: Shop,
) -> None:
    customer = await shop.customer("stripe")
    card = await save_card(shop, customer, "4242424242424242")
    r = await shop.client.put(
        f"/v1/customers/{customer}/auto-recharge", json={**RECHARGE, "enabled": False}
    )
    assert r.status_code == 200, r.text
    r = await shop.client.delete(f"/v1/customers/{customer}/payment-methods/{card['id']}")
    assert r.status_code == 200, r.text
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert (settings["enabled"], settings["disabled_reason"]) == (False, None)
    assert messages(shop, customer) == []


async def test_auto_recharge_cannot_be_turned_on_without_a_card(shop: Shop) -> None:
    customer = await shop.customer("stripe")
    r = await shop.client.put(f"/v1/customers/{customer}/auto-recharge", json=RECHARGE)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["type"] == "conflict"
    assert "no saved payment method" in r.json()["error"]["message"]
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert settings["enabled"] is False and settings["threshold"] is None  # nothing stored


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
            page.get_by_role("link", name="Continue to Stripe to enter your card").click()
            page.wait_for_url(f"{shop.stripe.url}/pay/*")  # Stripe's own page
            page.get_by_label("Card number").fill("4242 4242 4242 4242")
            page.get_by_role("button", name="Save card").click()
            page.wait_for_url(f"{portal}/payment?done=card-pending")
            assert page.get_by_text("once the payment provider confirms it").is_visible()

        await asyncio.to_thread(browse, portal, add_a_card)
        await shop.forward(shop.stripe, "stripe", 2)  # setup_intent.succeeded: saved

        def see_it_and_turn_on_auto_recharge(page: Any) -> None:
            page.goto(f"{portal}/payment")
            assert page.locator("#saved-cards tbody th").all_inner_texts() == [
                "Visa ending 4242 (used for payments)"
            ]
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


# -- auto-recharge -------------------------------------------------------------------------------

HOUR = 3600 * 1_000_000


def gpt4o(customer: str, n: int) -> list[dict[str, Any]]:
    """``n`` calls of 1,000,000 input tokens: 2.50 each (and the first one of the period
    opens a 2.00 package of requests)."""
    return [
        {
            "id": unique("evt"),
            "customer_id": customer,
            "type": "llm.completion",
            "properties": {"model": "gpt-4o", "input_tokens": 1_000_000, "output_tokens": 0},
        }
        for _ in range(n)
    ]


async def recharging(shop: Shop, card: str = "pm_card_visa", cap: str = "120") -> str:
    """A prepaid customer with 10.00 of credit and a saved card, recharging 50.00 below 5.00."""
    customer = await shop.customer(
        "stripe", billing_mode="prepaid", payment_method=card, name="Acme AI"
    )
    r = await answered(
        lambda: shop.client.post("/v1/subscriptions", json={"customer_id": customer, "plan": "pro"})
    )
    assert r.status_code == 201, r.text
    r = await answered(
        lambda: shop.client.post(f"/v1/customers/{customer}/credits", json={"amount": "10.00"})
    )
    assert r.status_code == 201, r.text
    r = await answered(
        lambda: shop.client.put(
            f"/v1/customers/{customer}/auto-recharge",
            json={"enabled": True, "threshold": "5", "amount": "50", "monthly_cap": cap},
        )
    )
    assert r.status_code == 200, r.text
    return customer


async def crossings_of(shop: Shop, customer: str, count: int) -> list[dict[str, Any]]:
    """The customer's crossings, once the shard has written ``count`` of them."""
    store = shop.billing.recharges.store
    for _ in range(600):
        found = await asyncio.to_thread(store.crossings, "test", customer)
        if len(found) >= count:
            assert len(found) == count, found
            return sorted(found, key=lambda c: c["crossing"])
        await asyncio.sleep(0.1)
    seen = AlertStore(shop.billing.store.engine).messages("test", "", 500)
    mine = [(m["type"], m["id"]) for m in seen if m["data"].get("customer_id") == customer]
    status = await shop.shard.status.remote()
    raise AssertionError(f"the shard wrote {len(found)} of {count} crossings; {mine}; {status}")


async def replicas_sweep(shop: Shop) -> None:
    """Two replicas sweep at once (each its own AutoRecharges over the same store)."""
    other = AutoRecharges(shop.billing, RechargeStore(shop.billing.store.engine))
    await asyncio.gather(shop.billing.recharges.sweep(), other.sweep())
    shop.billing.purchases.on_paid.remove(other.on_paid)


async def answered(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """What a well-behaved client (or a provider's webhook sender) does: try again while a
    restarting shard answers 503."""
    for _ in range(600):
        r = await send()
        if r.status_code != 503:
            return r
        await asyncio.sleep(0.2)
    return r


async def deliver(shop: Shop, customer: str, count: int) -> None:
    """Hand the app Stripe's webhooks about the customer's recharges (``count`` of them, once
    they are sent), as Stripe would deliver them."""
    ours = {i["id"] for i in charges_of(shop, customer)}
    for _ in range(100):
        sent = [
            d
            for d in shop.stripe.webhooks
            if json.loads(d.body)["data"]["object"].get("id") in ours
        ]
        if len(sent) >= count:
            break
        await asyncio.sleep(0.1)
    assert len(sent) == count, len(sent)
    for delivery in sent:
        r = await answered(
            lambda d=delivery: shop.client.post(  # type: ignore[misc]
                "/v1/providers/stripe/webhook",
                content=d.body,
                headers={"Stripe-Signature": d.headers["Stripe-Signature"]},
            )
        )
        assert r.status_code == 200, r.text


def charges_of(shop: Shop, customer: str) -> list[dict[str, Any]]:
    """The PaymentIntents Stripe made for the customer's recharges (every attempt's purchase
    id is derived from its crossing and attempt number)."""
    ours = {
        purchase_id_of(c["id"], attempt)
        for c in shop.billing.recharges.store.crossings("test", customer)
        for attempt in range(1, 6)
    }
    return [
        i
        for i in shop.stripe.payment_intents.values()
        if i["metadata"].get("tallyray_purchase_id") in ours
    ]


async def grants(shop: Shop, customer: str) -> dict[str, str]:
    r = await answered(lambda: shop.client.get(f"/v1/customers/{customer}/balance"))
    assert r.status_code == 200, r.text
    return {g["id"]: g["amount"] for g in r.json()["grants"]}


def messages(shop: Shop, customer: str) -> list[tuple[str, Any]]:
    found = AlertStore(shop.billing.store.engine).messages("test", "recharge.", 500)
    return sorted(
        (m["type"], m["data"].get("final"))
        for m in found
        if m["data"].get("customer_id") == customer
    )


async def test_8_producers_crossing_the_threshold_recharge_exactly_once(shop: Shop) -> None:
    customer = await recharging(shop)
    # 8 producers, 2 calls each: 2.00 + 16 × 2.50 = 42.00 spent, 10 − 42 = −32 available.
    answers = await asyncio.gather(
        *(shop.client.post("/v1/events", json=gpt4o(customer, 2)) for _ in range(8))
    )
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    (crossing,) = await crossings_of(shop, customer, 1)
    await replicas_sweep(shop)
    await replicas_sweep(shop)  # again: nothing more to charge

    (charge,) = charges_of(shop, customer)
    assert (charge["amount"], charge["status"]) == (5000, "succeeded")  # 50.00 EUR
    (crossing,) = await crossings_of(shop, customer, 1)
    assert charge["metadata"] == {"tallyray_purchase_id": crossing["purchase_id"]}
    assert grant_id_of(crossing["purchase_id"]) not in await grants(shop, customer)
    # The credit arrives with the signed webhook, once however often it is delivered.
    await deliver(shop, customer, 1)
    await deliver(shop, customer, 1)
    assert (await grants(shop, customer))[grant_id_of(crossing["purchase_id"])] == "50.00"
    (crossing,) = await crossings_of(shop, customer, 1)
    assert crossing["status"] == "succeeded"
    assert messages(shop, customer) == [("recharge.succeeded", None)]
    # −32 + 50 = 18 ≥ 5: re-armed by the grant, and no second crossing came of it.
    await replicas_sweep(shop)
    assert len(charges_of(shop, customer)) == 1


async def test_a_shard_killed_after_the_crossing_charges_once_after_recovery(
    shop: Shop,
) -> None:
    customer = await recharging(shop)
    r = await shop.client.post("/v1/events", json=gpt4o(customer, 4))  # 2 + 10: −2 available
    assert r.status_code == 200, r.text
    # Before anything was charged; Ray restarts it, and it gets only reads: it must write
    # what its replay fired by itself.
    await killed_and_back(shop.shard)
    r = await answered(lambda: shop.client.get(f"/v1/customers/{customer}/balance"))
    assert r.status_code == 200, r.text  # the restarted shard has recovered and answers
    await crossings_of(shop, customer, 1)
    await replicas_sweep(shop)
    await deliver(shop, customer, 1)
    assert len(charges_of(shop, customer)) == 1
    (crossing,) = await crossings_of(shop, customer, 1)
    assert (await grants(shop, customer))[grant_id_of(crossing["purchase_id"])] == "50.00"
    await replicas_sweep(shop)
    assert len(charges_of(shop, customer)) == 1
    (crossing,) = await crossings_of(shop, customer, 1)  # and the replay wrote no other


async def test_the_monthly_cap_skips_a_recharge_that_would_pass_it(shop: Shop) -> None:
    customer = await recharging(shop, cap="60")
    r = await shop.client.post("/v1/events", json=gpt4o(customer, 4))  # 10 − 12 = −2
    assert r.status_code == 200, r.text
    await crossings_of(shop, customer, 1)
    await replicas_sweep(shop)
    await deliver(shop, customer, 1)  # booked: −2 + 50 = 48, re-armed
    r = await shop.client.post("/v1/events", json=gpt4o(customer, 18))  # 48 − 45 = 3 < 5
    assert r.status_code == 200, r.text
    await crossings_of(shop, customer, 2)
    await replicas_sweep(shop)
    first, second = await crossings_of(shop, customer, 2)
    # 50 this month + 50 > 60: the second crossing charges nothing.
    assert (first["status"], second["status"]) == ("succeeded", "capped")
    assert len(charges_of(shop, customer)) == 1
    assert messages(shop, customer) == [("recharge.capped", None), ("recharge.succeeded", None)]


async def test_a_declined_card_is_retried_then_auto_recharge_is_turned_off(shop: Shop) -> None:
    customer = await recharging(shop, card="pm_card_chargeDeclined")
    r = await shop.client.post("/v1/events", json=gpt4o(customer, 4))
    assert r.status_code == 200, r.text
    (crossing,) = await crossings_of(shop, customer, 1)
    started = shop.clock.ahead
    try:
        # Attempts now, +1 h, +6 h, +24 h (each a new purchase), then it is turned off.
        for attempt, wait in ((1, 0), (2, 1), (3, 6), (4, 24)):
            shop.clock.ahead += wait * HOUR
            await replicas_sweep(shop)
            await replicas_sweep(shop)  # nothing is due twice
            assert len(charges_of(shop, customer)) == attempt
            (crossing,) = await crossings_of(shop, customer, 1)
        await deliver(shop, customer, 4)  # the four payment_intent.payment_failed
    finally:
        shop.clock.ahead = started
    assert crossing["status"] == "failed"
    settings = (await shop.client.get(f"/v1/customers/{customer}/auto-recharge")).json()
    assert settings["enabled"] is False
    assert "turned off after 4 declined attempts" in settings["disabled_reason"]
    (disabled,) = disabled_of(shop, customer)
    assert disabled["data"]["code"] == "declined"
    assert messages(shop, customer) == [
        ("recharge.disabled", None),
        ("recharge.failed", False),
        ("recharge.failed", False),
        ("recharge.failed", False),
        ("recharge.failed", True),
    ]
    assert await grants(shop, customer) == {
        g: a for g, a in (await grants(shop, customer)).items() if a == "10.00"
    }
