"""Buying credit through the payment providers, on each store: top-ups on the local Stripe and
Adyen fakes' hosted pages, and the recharge core (an off-session charge) auto-recharge uses.

The rule under test: credit is booked once, on the provider's signed success webhook, and
never on the redirect back. Webhooks the fakes send are caught by an inbox, then handed to the
app as often, and as concurrently, as a test likes. One store, shard and pair of fakes per
module (the purchases of one test do not meet another's: each has its own customer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import ray
from fakes import Delivery, WebhookInbox
from fakes.adyen_server import FakeAdyen
from fakes.stripe_server import FakeStripe
from suite_clock import CLOCK
from support import POSTGRES_URL, Server, create_postgres_database, drop_postgres_database, unique

from tallyray.actors.shard import ShardActor
from tallyray.cluster import Settings, prepare_store
from tallyray.errors import ProviderUnavailable
from tallyray.invoicing.payments import AdyenProvider, PaymentProviders, StripeProvider
from tallyray.invoicing.purchases import grant_id_of
from tallyray.invoicing.service import Billing
from tallyray.serve.api import Services
from tallyray.serve.app import build_app
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import NAMESPACE, ShardRouter
from tallyray.storage.billing import BillingStore
from tallyray.storage.keys import KeyStore

pytestmark = pytest.mark.anyio

STRIPE_KEY = "sk_test_topups"
STRIPE_SECRET = "whsec_topups"
ADYEN_KEY = "AQE_test_topups"
ADYEN_MERCHANT = "TallyrayTest"
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
SELLER = {"name": "Tallyray Demo GmbH", "country": "DE", "vat_id": "DE136695976"}
TAX = {"engine": "eu_vat", "seller_country": "DE", "seller_vat_id": "DE136695976"}
TOP_UPS = {"minimum": "5.00", "maximum": "500.00", "receipt_prefix": "RCT-"}
#: Where the customer comes back to when the request names no return_url.
RETURNED = "http://tallyray.test/top-ups/returned"


@dataclass
class Shop:
    app: Any
    billing: Billing
    keys: KeyStore
    stripe: FakeStripe
    adyen: FakeAdyen
    inbox: WebhookInbox
    catalog: Any

    @contextlib.asynccontextmanager
    async def client(self, env: str = "test") -> AsyncIterator[httpx.AsyncClient]:
        _, key = self.keys.create(env, CLOCK())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://tallyray.test",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as client:
            yield client


@pytest.fixture(scope="module")
def shop(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    if server.store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('top-ups')}/shop.db"
    settings = Settings.load(database_url=url, shards=1, config_path=server.settings.config_path)
    catalog = prepare_store(settings)
    shard = (
        ray.remote(ShardActor)
        .options(name=unique("top-up-shard"), namespace=NAMESPACE, max_restarts=-1)
        .remote(0, 1, url, 0.5, 3 * 86_400, 0.0, CLOCK.offset_us)
    )
    ray.get(shard.ready.remote())
    router = ShardRouter(1, lambda i: shard)
    with (
        WebhookInbox() as inbox,
        FakeStripe(STRIPE_KEY, webhook_url=inbox.url, webhook_secret=STRIPE_SECRET) as stripe,
        FakeAdyen(ADYEN_KEY, ADYEN_MERCHANT, webhook_url=inbox.url, hmac_key=ADYEN_HMAC) as adyen,
    ):
        billing = Billing(
            catalog=catalog,
            store=BillingStore(catalog.engine),
            database_url=url,
            router=router,
            invoicing_raw={"seller": SELLER, "top_ups": TOP_UPS},
            tax_raw=TAX,
            clock=CLOCK,
            # test-mode credentials only: the test environment's providers
            providers=PaymentProviders(
                test={
                    "stripe": StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=stripe.url),
                    "adyen": AdyenProvider(
                        ADYEN_KEY, ADYEN_MERCHANT, ADYEN_HMAC, api_base=adyen.url
                    ),
                }
            ),
        )
        services = Services(
            catalog=catalog,
            router=router,
            rules=IntakeRules(),
            cache_seconds=0.2,
            billing=billing,
            clock=CLOCK,
        )
        try:
            yield Shop(
                build_app(services),
                billing,
                KeyStore(catalog.engine),
                stripe,
                adyen,
                inbox,
                catalog,
            )
        finally:
            billing.providers.close()
            ray.kill(shard, no_restart=True)
            catalog.engine.dispose()
            if server.store == "postgres" and POSTGRES_URL is not None:
                drop_postgres_database(POSTGRES_URL, url)


@pytest.fixture
async def client(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    async with shop.client() as c:
        yield c


async def customer(client: httpx.AsyncClient, provider: str, **fields: Any) -> str:
    customer_id = unique("buyer")
    body = {"id": customer_id, "currency": "EUR", "country": "FR", "payment_provider": provider}
    r = await client.post("/v1/customers", json={**body, **fields})
    assert r.status_code == 201, r.text
    return customer_id


async def credits(client: httpx.AsyncClient, customer_id: str) -> Decimal:
    r = await client.get(f"/v1/customers/{customer_id}/balance")
    assert r.status_code == 200, r.text
    return Decimal(r.json()["credits_remaining"])


def pay_on_hosted_page(checkout_url: str, **form: str) -> httpx.Response:
    """What the customer's browser does: open the hosted page, submit the form. The answer
    is the fake's (a redirect back, or the page again with a decline)."""
    with httpx.Client(timeout=10) as browser:
        assert browser.get(checkout_url).status_code == 200
        return browser.post(checkout_url, data=form)


def deliveries_for(fake: FakeStripe | FakeAdyen, purchase_id: str, count: int) -> list[Delivery]:
    """The webhooks ``fake`` sent about ``purchase_id``, once there are ``count``."""
    return fake.wait_for_matching(lambda d: purchase_id.encode() in d.body, count)


async def deliver(
    client: httpx.AsyncClient, provider: str, delivery: Delivery, **changes: str
) -> httpx.Response:
    headers = {k: v for k, v in delivery.headers.items() if k.lower() != "content-length"}
    headers.update(changes)
    return await client.post(
        f"/v1/providers/{provider}/webhook", content=delivery.body, headers=headers
    )


# -- Stripe -------------------------------------------------------------------------------


async def test_a_stripe_top_up_paid_once_books_once(shop: Shop, client: httpx.AsyncClient) -> None:
    buyer = await customer(client, "stripe", email="ada@example.fr")
    r = await client.post(
        f"/v1/customers/{buyer}/top-ups",
        json={"amount": "50.00", "return_url": "https://app.example/credit"},
    )
    assert r.status_code == 201, r.text
    top_up = r.json()
    assert (top_up["status"], top_up["amount"], top_up["currency"]) == ("pending", "50.00", "EUR")
    session = shop.stripe.checkout_sessions[top_up["provider_reference"]]
    assert top_up["checkout_url"] == session["url"]
    assert session["amount_total"] == 5000  # 50.00 EUR in cents
    assert session["metadata"] == {"tallyray_purchase_id": top_up["id"]}

    # The customer pays and is sent back; coming back (twice) books nothing.
    answer = pay_on_hosted_page(top_up["checkout_url"], card_number="4242424242424242")
    assert answer.status_code == 303
    back = answer.headers["location"]
    assert back == f"https://app.example/credit?top_up={top_up['id']}&result=paid"
    for _ in range(2):
        returned = await client.get(f"{urlsplit(RETURNED).path}?top_up={top_up['id']}&result=paid")
        assert returned.status_code == 200
    assert (await client.get(f"/v1/top-ups/{top_up['id']}")).json()["status"] == "pending"
    assert await credits(client, buyer) == 0

    # payment_intent.succeeded and checkout.session.completed: each delivered three times,
    # the last three at once.
    hooks = deliveries_for(shop.stripe, top_up["id"], 2)
    kinds = sorted(d.body.split(b'"type": "')[1].split(b'"')[0].decode() for d in hooks)
    assert kinds == ["checkout.session.completed", "payment_intent.succeeded"]
    processed = []
    for hook in hooks:
        r = await deliver(client, "stripe", hook)
        assert r.status_code == 200, r.text
        processed.append(r.json()["processed"])
    assert processed == [1, 1]  # two events, each new once
    answers = await asyncio.gather(*(deliver(client, "stripe", hooks[0]) for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["processed"] for a in answers] == [0, 0, 0]

    paid = (await client.get(f"/v1/top-ups/{top_up['id']}")).json()
    assert paid["status"] == "paid"
    assert paid["grant_id"] == grant_id_of(top_up["id"])
    assert await credits(client, buyer) == Decimal("50.00")  # booked once, not 5 times
    grants = shop.catalog.grants("test", buyer)
    assert [(g["id"], g["amount"]) for g in grants] == [(paid["grant_id"], "50.00")]

    # Its receipt: numbered in the receipt sequence, with the engine's tax decision (a French
    # consumer buying from Germany: OSS, French VAT 20%) charged on the usage invoices.
    receipt = paid["receipt"]
    assert receipt["number"].startswith("RCT-")
    assert (receipt["total"], receipt["tax"]) == ("50.00", "0")
    decision = receipt["tax_decision"]
    assert (decision["kind"], decision["jurisdiction"], decision["rate"]) == ("oss", "FR", "20")
    assert receipt["payment"]["reference"].startswith("pi_")

    listed = (await client.get(f"/v1/customers/{buyer}/top-ups")).json()
    assert [t["id"] for t in listed["top_ups"]] == [top_up["id"]]
    assert listed["has_more"] is False


async def test_a_declined_top_up_books_nothing_then_an_expired_one_is_canceled(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    buyer = await customer(client, "stripe")
    r = await client.post(f"/v1/customers/{buyer}/top-ups", json={"amount": "20.00"})
    assert r.status_code == 201, r.text
    top_up = r.json()
    answer = pay_on_hosted_page(top_up["checkout_url"], card_number="4000000000000002")
    assert answer.status_code == 200  # the page again, with the decline
    assert "Your card was declined." in answer.text
    (hook,) = deliveries_for(shop.stripe, top_up["id"], 1)
    assert b"payment_intent.payment_failed" in hook.body
    for _ in range(2):
        assert (await deliver(client, "stripe", hook)).status_code == 200
    failed = (await client.get(f"/v1/top-ups/{top_up['id']}")).json()
    assert (failed["status"], failed["grant_id"], failed["receipt"]) == ("failed", None, None)
    assert failed["failure"]["message"] == "Your card was declined."
    assert await credits(client, buyer) == 0

    shop.stripe.expire(top_up["provider_reference"])
    (_, expired) = deliveries_for(shop.stripe, top_up["id"], 2)
    assert (await deliver(client, "stripe", expired)).status_code == 200
    assert (await client.get(f"/v1/top-ups/{top_up['id']}")).json()["status"] == "canceled"
    assert await credits(client, buyer) == 0
    assert shop.catalog.grants("test", buyer) == []


async def test_a_forged_or_stale_signature_is_refused(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    buyer = await customer(client, "stripe")
    top_up = (await client.post(f"/v1/customers/{buyer}/top-ups", json={"amount": "9.00"})).json()
    pay_on_hosted_page(top_up["checkout_url"], card_number="4242424242424242")
    hook = deliveries_for(shop.stripe, top_up["id"], 2)[0]
    signature = hook.headers["Stripe-Signature"]
    wrong = signature[:-4] + ("0000" if not signature.endswith("0000") else "1111")
    for changes in ({"Stripe-Signature": wrong}, {"Stripe-Signature": "t=1,v1=00"}):
        r = await deliver(client, "stripe", hook, **changes)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_signature"
    r = await client.post(
        "/v1/providers/stripe/webhook",
        content=hook.body.replace(b"900", b"901"),
        headers={"Stripe-Signature": signature},
    )
    assert r.status_code == 400
    assert (await client.get(f"/v1/top-ups/{top_up['id']}")).json()["status"] == "pending"
    assert await credits(client, buyer) == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"amount": "4.99"}, 422, "from 5.00 to 500.00 EUR"),
        ({"amount": "500.01"}, 422, "from 5.00 to 500.00 EUR"),
        ({"amount": "10.001"}, 422, "amount"),
        ({"amount": "-5"}, 422, "amount"),
        ({"amount": "10.00", "currency": "USD"}, 422, "billed in EUR"),
        ({"amount": "10.00", "return_url": "javascript:alert(1)"}, 422, "return_url"),
        ({"amount": "10.00", "tip": "1"}, 422, "the request body has problems"),
        ({}, 422, "the request body has problems"),
    ],
)
async def test_top_up_requests_that_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, says: str
) -> None:
    buyer = await customer(client, "stripe")
    r = await client.post(f"/v1/customers/{buyer}/top-ups", json=body)
    assert r.status_code == status, r.text
    assert says in r.text
    assert (await client.get(f"/v1/customers/{buyer}/top-ups")).json()["top_ups"] == []


async def test_a_customer_without_a_payment_page_or_in_another_environment(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    manual = await customer(client, "manual")
    r = await client.post(f"/v1/customers/{manual}/top-ups", json={"amount": "10.00"})
    assert r.status_code == 409
    assert 'need "payment_provider": "stripe" or "adyen"' in r.json()["error"]["message"]
    r = await client.post("/v1/customers/nobody/top-ups", json={"amount": "10.00"})
    assert r.status_code == 404
    # The live environment has no Stripe credentials here: never the test ones.
    async with shop.client("live") as live:
        buyer = await customer(live, "stripe")
        r = await live.post(f"/v1/customers/{buyer}/top-ups", json={"amount": "10.00"})
        assert r.status_code == 409
        assert "stripe is not configured for the live environment" in r.text


# -- Adyen --------------------------------------------------------------------------------


async def test_an_adyen_top_up_books_once_on_its_signed_notification(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    buyer = await customer(client, "adyen")
    r = await client.post(f"/v1/customers/{buyer}/top-ups", json={"amount": "25.00"})
    assert r.status_code == 201, r.text
    top_up = r.json()
    session = shop.adyen.sessions[top_up["provider_reference"]]
    assert (session["reference"], session["amount"]) == (
        top_up["id"],
        {"value": 2500, "currency": "EUR"},
    )
    assert top_up["session_data"] == session["sessionData"]

    refused = pay_on_hosted_page(
        top_up["checkout_url"], card_number="4111111145551142", holder_name="DECLINED"
    )
    assert "Refused" in refused.text
    answer = pay_on_hosted_page(
        top_up["checkout_url"], card_number="4111111145551142", holder_name="Ada"
    )
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"{RETURNED}?top_up={top_up['id']}&result=paid")
    declined, authorised = deliveries_for(shop.adyen, top_up["id"], 2)
    assert b'"success": "false"' in declined.body
    assert (await deliver(client, "adyen", declined)).text == "[accepted]"
    assert (await client.get(f"/v1/top-ups/{top_up['id']}")).json()["status"] == "failed"
    # the authorisation comes after the refusal (another try on the same page), three times
    for _ in range(3):
        assert (await deliver(client, "adyen", authorised)).text == "[accepted]"
    paid = (await client.get(f"/v1/top-ups/{top_up['id']}")).json()
    assert paid["status"] == "paid"
    assert await credits(client, buyer) == Decimal("25.00")
    assert paid["receipt"]["number"].startswith("RCT-")

    # An item whose HMAC does not match: the whole delivery is refused.
    forged = authorised.body.replace(b'"value": 2500', b'"value": 250000')
    r = await client.post("/v1/providers/adyen/webhook", content=forged)
    assert r.status_code == 400
    assert await credits(client, buyer) == Decimal("25.00")


# -- the recharge core --------------------------------------------------------------------


async def test_an_off_session_recharge_books_once_and_is_not_charged_twice(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    buyer = await customer(client, "stripe", payment_method="pm_card_visa")
    purchases = shop.billing.purchases
    purchase_id = f"pur_{unique('crossing').replace('-', '')}"
    purchase, result = await purchases.start_recharge(
        "test", buyer, Decimal("30.00"), purchase_id=purchase_id
    )
    assert result is not None and result.status == "succeeded"
    assert (purchase["kind"], purchase["status"]) == ("recharge", "pending")  # not yet booked
    assert await credits(client, buyer) == 0
    # The same crossing asked again (a retry, another replica): nothing charged again.
    again, none = await purchases.start_recharge(
        "test", buyer, Decimal("30.00"), purchase_id=purchase_id
    )
    assert (again["id"], none) == (purchase_id, None)
    intents = [
        i
        for i in shop.stripe.payment_intents.values()
        if i["metadata"] == {"tallyray_purchase_id": purchase_id}
    ]
    assert len(intents) == 1

    told: list[str] = []

    async def notify(env: str, bought: Any) -> None:
        told.append(bought["id"])

    purchases.on_paid.append(notify)
    try:
        (hook,) = deliveries_for(shop.stripe, purchase_id, 1)
        for _ in range(3):
            assert (await deliver(client, "stripe", hook)).status_code == 200
    finally:
        purchases.on_paid.remove(notify)
    assert told == [purchase_id]  # told once
    assert await credits(client, buyer) == Decimal("30.00")
    paid = purchases.store.get("test", purchase_id)
    assert paid["document"]["lines"][0]["description"] == "Prepaid credit (auto-recharge)"

    # The provider is down for the first call: the purchase waits, and the same attempt asked
    # again is charged once.
    later = await customer(client, "stripe", payment_method="pm_card_visa")
    outage_id = f"pur_{unique('outage').replace('-', '')}"
    shop.stripe.fail_next(500, times=2)  # the SDK's one network retry, too
    with pytest.raises(ProviderUnavailable):
        await purchases.start_recharge("test", later, Decimal("15.00"), purchase_id=outage_id)
    assert purchases.store.get("test", outage_id)["status"] == "pending"
    purchase, result = await purchases.start_recharge(
        "test", later, Decimal("15.00"), purchase_id=outage_id
    )
    assert result is not None and result.status == "succeeded"
    assert purchase["provider_reference"].startswith("pi_")

    # A declined card: failed at once, nothing booked.
    declined = await customer(client, "stripe", payment_method="pm_card_chargeDeclined")
    purchase, result = await purchases.start_recharge("test", declined, Decimal("30.00"))
    assert result is not None and result.status == "failed"
    assert purchase["status"] == "failed"
    assert await credits(client, declined) == 0


async def test_an_off_session_recharge_through_adyen_books_once_on_its_notification(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    """The recharge core with a card stored at Adyen: ``/payments`` with the stored payment
    method, ``reference`` = the purchase; the HMAC-signed AUTHORISATION books it, once."""
    buyer = await customer(client, "adyen", payment_method="STOREDCARD0001")
    purchases = shop.billing.purchases
    purchase_id = f"pur_{unique('adyen').replace('-', '')}"
    purchase, result = await purchases.start_recharge(
        "test", buyer, Decimal("40.00"), purchase_id=purchase_id
    )
    assert result is not None and result.status == "succeeded"
    assert (purchase["kind"], purchase["status"]) == ("recharge", "pending")
    (payment,) = [
        r.json()
        for r in shop.adyen.received
        if r.path.endswith("/payments") and r.json()["reference"] == purchase_id
    ]
    assert payment["paymentMethod"]["storedPaymentMethodId"] == "STOREDCARD0001"
    assert payment["amount"] == {"value": 4000, "currency": "EUR"}
    (hook,) = deliveries_for(shop.adyen, purchase_id, 1)
    for _ in range(3):
        assert (await deliver(client, "adyen", hook)).text == "[accepted]"
    assert await credits(client, buyer) == Decimal("40.00")
    assert purchases.store.get("test", purchase_id)["status"] == "paid"
    # A stored card Adyen refuses: failed at once, nothing booked.
    refused = await customer(client, "adyen", payment_method="refused")
    purchase, result = await purchases.start_recharge("test", refused, Decimal("40.00"))
    assert result is not None and result.status == "failed"
    assert purchase["status"] == "failed"
    assert await credits(client, refused) == 0


# -- the portal's "Add credit" page ---------------------------------------------------------


async def test_the_portal_add_credit_page_books_only_after_the_webhook(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    buyer = await customer(client, "stripe", locale="de_DE")
    r = await client.post("/v1/portal-sessions", json={"customer_id": buyer})
    assert r.status_code == 201, r.text
    portal = r.json()["url"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=shop.app), base_url="http://tallyray.test"
    ) as web:
        page = await web.get(f"{portal}/credit")
        assert page.status_code == 200
        assert "From 5,00\xa0€ to 500,00\xa0€" in page.text
        # typed in the customer's locale; outside the limits: the page again, with the reason
        r = await web.post(f"{portal}/credit", data={"amount": "4,50"})
        assert r.status_code == 422
        assert "A top-up must be from 5.00 to 500.00 EUR" in r.text
        r = await web.post(f"{portal}/credit", data={"amount": "12,50"})
        assert r.status_code == 303
        top_up_page = r.headers["location"]
        page = await web.get(top_up_page)
        assert 'id="continue-to-payment"' in page.text
        top_up_id = top_up_page.rsplit("/", 1)[1]
        top_up = (await client.get(f"/v1/top-ups/{top_up_id}")).json()
        assert (top_up["amount"], top_up["status"]) == ("12.50", "pending")
        assert f'href="{top_up["checkout_url"]}"' in page.text

        shop.stripe.hold_webhooks()  # the provider is slow to confirm
        try:
            answer = pay_on_hosted_page(top_up["checkout_url"], card_number="4242424242424242")
            back = urlsplit(answer.headers["location"])
            assert back.path == f"{portal}/credit/returned"
            page = await web.get(f"{back.path}?{back.query}")
            assert "We are waiting for the payment provider to confirm" in page.text
            assert await credits(client, buyer) == 0
        finally:
            shop.stripe.release_webhooks()
        for hook in deliveries_for(shop.stripe, top_up_id, 2):
            assert (await deliver(client, "stripe", hook)).status_code == 200
        page = await web.get(f"{back.path}?{back.query}")
        assert "was added to your credit" in page.text
        assert await credits(client, buyer) == Decimal("12.50")
        overview = await web.get(portal)
        assert "12,50\xa0€" in overview.text
