"""Invoicing end to end, on each store: events → close → run → invoice → documents.

Each test gets its own store and shard, accepts events up to 120 days late (so October can be
filled in at the end of November), and bills from a seller in Germany under EU VAT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest
from fakes import WebhookInbox
from fakes.adyen_server import FakeAdyen, notification_item, signed_notification
from fakes.stripe_server import FakeStripe
from suite_clock import CLOCK
from support import Server, billing_stage, unique

from tallyray.clock import Clock, ShiftedClock, offset_to
from tallyray.invoicing.payments import AdyenProvider, PaymentProviders, StripeProvider
from tallyray.invoicing.service import Billing
from tallyray.pricing.events import parse_timestamp
from tallyray.serve.api import Services
from tallyray.serve.app import build_app
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import ShardRouter
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog

pytestmark = pytest.mark.anyio

GRACE = 120 * 86_400  # October can still be filled in at the end of November
OCT_1 = "2026-10-01T00:00:00Z"
NOV_1 = "2026-11-01T00:00:00Z"
SELLER = {
    "name": "Tallyray Demo GmbH",
    "email": "billing@tallyray.example",
    "vat_id": "DE136695976",
    "country": "DE",
    "address": {"line1": "Hauptstraße 1", "postal_code": "10115", "city": "Berlin"},
}
TAX = {
    "engine": "eu_vat",
    "seller_country": "DE",
    "seller_vat_id": "DE136695976",
    "vat_id_checks": {"FR40303265045": True},
}


@dataclass
class Invoicing:
    client: httpx.AsyncClient
    billing: Billing
    prefix: str
    live: httpx.AsyncClient
    """A client with a live key: ``dataclasses.replace(inv, client=inv.live)`` works live."""

    async def run(self, **body: Any) -> dict[str, Any]:
        r = await self.client.post("/v1/invoice-runs", json={"until": NOV_1, "force": True, **body})
        assert r.status_code == 202, r.text
        await self.billing.wait(r.json()["id"])
        r = await self.client.get(f"/v1/invoice-runs/{r.json()['id']}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def invoices(self, customer: str) -> list[dict[str, Any]]:
        r = await self.client.get("/v1/invoices", params={"customer_id": customer})
        assert r.status_code == 200, r.text
        return list(r.json()["invoices"])


def make_billing(
    catalog: Catalog, router: ShardRouter, url: str, clock: Clock = CLOCK, **invoicing: Any
) -> Billing:
    # Three payment attempts a day apart, then uncollectible.
    invoicing.setdefault("dunning", {"retry_days": [1, 1]})
    return Billing(
        catalog=catalog,
        store=BillingStore(catalog.engine),
        database_url=url,
        router=router,
        invoicing_raw={"seller": SELLER, "number_prefix": "INV-", **invoicing},
        tax_raw=TAX,
        rounding="half_up",
        grace_seconds=GRACE,
        clock=clock,
    )


#: Moments to run date-sensitive tests at: each clock starts there and runs on during the
#: test, across the end of November, and across the end of the year.
AROUND_MONTH_AND_YEAR_END = [
    pytest.param("2026-11-30T23:59:57Z", id="month-end"),
    pytest.param("2026-12-31T23:59:57Z", id="year-end"),
]


@pytest.fixture
async def inv(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Invoicing]:
    """A fresh store and shard per test: closing a period is for good, so tests that close
    October must not share an environment. The clock is the suite's, or starts where the
    test's ``inv`` parameter says (``indirect=True``)."""
    start = getattr(request, "param", None)
    clock = CLOCK if start is None else ShiftedClock(offset_to(parse_timestamp(start)))
    assert server.settings.config_path is not None
    async with billing_stage(
        server.store, tmp_path, server.settings.config_path, GRACE, clock
    ) as stage:
        billing = make_billing(stage.catalog, stage.router, stage.url, clock)
        app = stage.app(billing)
        async with stage.client(app, "test") as client, stage.client(app, "live") as live:
            yield Invoicing(client, billing, "INV-", live)


async def october_customer(inv: Invoicing, *, credits: str | None = None, **fields: Any) -> str:
    customer = unique("cust")
    doc = {
        "id": customer,
        "currency": "EUR",
        "name": "Müller & Söhne",
        "country": "DE",
        "locale": "de_DE",
        **fields,
    }
    r = await inv.client.post("/v1/customers", json=doc)
    assert r.status_code == 201, r.text
    r = await inv.client.post(
        "/v1/subscriptions", json={"customer_id": customer, "plan": "pro", "start": OCT_1}
    )
    assert r.status_code == 201, r.text
    if credits is not None:
        r = await inv.client.post(f"/v1/customers/{customer}/credits", json={"amount": credits})
        assert r.status_code == 201, r.text
    return customer


def october_events(customer: str) -> list[dict[str, Any]]:
    calls = [
        {
            "id": unique("evt"),
            "customer_id": customer,
            "type": "llm.completion",
            "timestamp": f"2026-10-{10 + i}T12:00:00Z",
            "properties": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500},
        }
        for i in range(3)
    ]
    seats = [
        {
            "id": unique("evt"),
            "customer_id": customer,
            "type": "seat.active",
            "timestamp": "2026-10-20T09:00:00Z",
            "properties": {"user_id": user},
        }
        for user in ("ana", "ben")
    ]
    return calls + seats


def amounts(invoice: dict[str, Any]) -> dict[str, str]:
    return {line["description"]: line["amount"] for line in invoice["lines"]}


async def test_a_month_from_events_to_a_finalized_invoice_and_its_pdf(inv: Invoicing) -> None:
    customer = await october_customer(inv, credits="20.00")
    r = await inv.client.post("/v1/events", json=october_events(customer))
    assert r.status_code == 200, r.text

    run = await inv.run()
    assert run["status"] == "succeeded", run
    (invoice,) = await inv.invoices(customer)

    assert invoice["status"] == "finalized"
    assert invoice["number"] == "INV-000001"
    assert invoice["period"] == {"start": OCT_1, "end": NOV_1}
    assert amounts(invoice) == {
        "Pro base fee": "49.00",
        "gpt-4o input tokens": "0.01",  # 3,000 × 0.0000025 = 0.0075
        "gpt-4o output tokens": "0.02",  # 1,500 × 0.00001 = 0.015, half up
        "gpt-4o-mini input tokens": "0.00",
        "gpt-4o-mini output tokens": "0.00",
        "API requests (per 1,000)": "2.00",  # 3 requests: one started package
        "Seats": "30.00",  # 2 seats × 15.00
        "Minimum commitment true-up (minimum 100.00)": "18.97",  # 100 − 81.03
    }
    assert invoice["subtotal"] == "100.00"
    assert invoice["taxes"][0] | {"kind": "domestic"} == {
        "name": "VAT",
        "jurisdiction": "DE",
        "rate": "19",
        "kind": "domestic",
        "taxable_amount": "100.00",
        "amount": "19.00",
    }
    assert invoice["total"] == "119.00"
    # usage spend 32.0225 burned all 20.00 of the grant during October
    assert invoice["credits_applied"] == "20.00"
    assert invoice["amount_due"] == "99.00"

    r = await inv.client.get(f"/v1/invoices/{invoice['id']}.pdf")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pdf"
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(r.content)).pages)
    for expected in ("INV-000001", "Müller & Söhne", "DE136695976", "119,00", "99,00"):
        assert expected in text, expected

    r = await inv.client.get(f"/v1/invoices/{invoice['id']}.html")
    assert r.status_code == 200 and "INV-000001" in r.text


async def test_a_closed_period_refuses_late_events_and_is_never_billed_twice(
    inv: Invoicing,
) -> None:
    customer = await october_customer(inv)
    r = await inv.client.post("/v1/events", json=october_events(customer))
    assert r.status_code == 200, r.text
    first = await inv.run()
    late = october_events(customer)[:1]
    r = await inv.client.post("/v1/events", json=late)
    assert r.status_code == 422, r.text
    assert "closed billing period" in r.json()["error"]["details"][0]["message"]

    second = await inv.run()
    assert second["invoices"] == 0
    assert first["invoices"] >= 1
    (invoice,) = await inv.invoices(customer)
    assert invoice["number"] == "INV-000001"


async def test_concurrent_runs_make_one_invoice_per_customer_with_gapless_numbers(
    inv: Invoicing,
) -> None:
    customers = [await october_customer(inv) for _ in range(6)]
    runs = await asyncio.gather(inv.run(), inv.run(), inv.run())
    assert {run["status"] for run in runs} == {"succeeded"}
    numbers = []
    for customer in customers:
        (invoice,) = await inv.invoices(customer)
        numbers.append(invoice["number"])
    # Only base fee + minimum (no usage): 49.00 + true-up 51.00, 19% VAT.
    assert sorted(numbers) == [f"INV-{n:06d}" for n in range(1, 7)]


async def test_a_crashed_run_resumes_without_billing_twice(inv: Invoicing, server: Server) -> None:
    customers = [await october_customer(inv) for _ in range(4)]
    # A crash half way: the run was recorded and one chunk of customers invoiced, then the
    # process driving it died.
    from tallyray.invoicing.runs import RunSpec, invoice_chunk
    from tallyray.pricing.events import parse_timestamp

    until = parse_timestamp(NOV_1)
    del server
    store = inv.billing.store
    run_id = store.create_run("test", until, {"force": True, "finalize": True}, 0)
    store.update_run(run_id, status="running", customers=len(customers))
    await inv.billing._close("test", until)
    spec = RunSpec(
        database_url=inv.billing.database_url,
        env="test",
        run_id=run_id,
        until=until,
        finalize=True,
        invoicing=dict(inv.billing.invoicing_raw or {}),
        tax=TAX,
    )
    invoice_chunk(spec, customers[:2], inv.billing.clock())

    r = await inv.client.post(f"/v1/invoice-runs/{run_id}/resume")
    assert r.status_code == 202, r.text
    await inv.billing.wait(run_id)
    run = (await inv.client.get(f"/v1/invoice-runs/{run_id}")).json()
    assert run["status"] == "succeeded"
    numbers = sorted([(await inv.invoices(c))[0]["number"] for c in customers])
    assert numbers == [f"INV-{n:06d}" for n in range(1, 5)]


TAX_CASES = [
    # a German consumer: domestic, 19%
    ({"country": "DE"}, "domestic", "19", None),
    # a French consumer: destination VAT through OSS, 20%
    ({"country": "FR"}, "oss", "20", None),
    # a French business whose VAT id is verified: reverse charge
    ({"country": "FR", "vat_id": "FR40303265045"}, "intra_eu_reverse_charge", "0", "Article 196"),
    # a US customer: outside the EU
    ({"country": "US"}, "export", "0", "outside the EU"),
]


async def test_tax_follows_the_buyer(inv: Invoicing) -> None:
    """A customer of each of :data:`TAX_CASES`, invoiced by one run."""
    customers = [await october_customer(inv, **fields) for fields, _, _, _ in TAX_CASES]
    await inv.run()
    for customer, (fields, kind, rate, note) in zip(customers, TAX_CASES, strict=True):
        (invoice,) = await inv.invoices(customer)
        (tax,) = invoice["taxes"]
        assert (tax["kind"], tax["rate"]) == (kind, rate), fields
        expected = Decimal(100) * Decimal(rate) / 100  # base fee + true-up = the 100.00 minimum
        assert Decimal(invoice["tax"]) == expected, fields
        if note is None:
            assert invoice["notes"] == [], fields
        else:
            assert note in invoice["notes"][0], fields


async def test_void_paid_and_credit_notes(inv: Invoicing) -> None:
    customer = await october_customer(inv, payment_provider="manual")
    await inv.run()
    (invoice,) = await inv.invoices(customer)
    iid = invoice["id"]

    r = await inv.client.post(
        f"/v1/invoices/{iid}/credit-notes", json={"reason": "goodwill", "amount": "10.00"}
    )
    assert r.status_code == 201, r.text
    note = r.json()
    assert note["number"] == "CN-000001"
    assert note["credit_note_for"]["number"] == invoice["number"]
    r = await inv.client.post(
        f"/v1/invoices/{iid}/credit-notes", json={"reason": "too much", "amount": "1000.00"}
    )
    assert r.status_code == 422

    r = await inv.client.post(f"/v1/invoices/{iid}/mark-paid")
    assert r.status_code == 200 and r.json()["status"] == "paid"
    r = await inv.client.post(f"/v1/invoices/{iid}/void")
    assert r.status_code == 409
    assert "paid" in r.json()["error"]["message"]
    # the document of a finalized invoice never changes
    after = (await inv.client.get(f"/v1/invoices/{iid}")).json()
    assert after["lines"] == invoice["lines"] and after["total"] == invoice["total"]


async def test_reconcile_recomputes_a_closed_period_from_the_event_log(
    inv: Invoicing, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import delete, select

    from tallyray.cli import main
    from tallyray.invoicing.reconcile import reconcile_env
    from tallyray.storage import tables as t

    customer = await october_customer(inv)
    r = await inv.client.post("/v1/events", json=october_events(customer))
    assert r.status_code == 200, r.text
    await inv.run()
    (result,) = reconcile_env(inv.billing.catalog, inv.billing.store, "test", customer)
    assert result.ok
    assert result.events == 5
    assert result.quantities["requests"] == "3"
    assert result.quantities["seats"] == "2"
    args = ["reconcile", "--env", "test", "--customer", customer]
    assert main([*args, "--database-url", inv.billing.database_url]) == 0

    # Lose one event from the log: the checkpoint no longer matches it, and it is reported.
    with inv.billing.catalog.engine.begin() as conn:
        seq = (
            conn.execute(
                select(t.events.c.seq).where(
                    t.events.c.customer_id == customer, t.events.c.type == "seat.active"
                )
            )
            .scalars()
            .first()
        )
        conn.execute(delete(t.events).where(t.events.c.seq == seq))
    (result,) = reconcile_env(inv.billing.catalog, inv.billing.store, "test", customer)
    assert [d.to_json() for d in result.differences] == [
        {"meter": "seats", "group": {}, "checkpoint": "2", "events": "1"}
    ]
    capsys.readouterr()
    assert main([*args, "--database-url", inv.billing.database_url]) == 1
    assert "1 of 1 closed periods differ" in capsys.readouterr().err


# -- payments -------------------------------------------------------------------------------

STRIPE_KEY, STRIPE_SECRET = "sk_test_tallyray", "whsec_tallyray_test"
ADYEN_HMAC = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"


async def test_a_month_paid_through_stripe_and_confirmed_by_its_webhook(inv: Invoicing) -> None:
    with (
        WebhookInbox() as inbox,
        FakeStripe(STRIPE_KEY, webhook_url=inbox.url, webhook_secret=STRIPE_SECRET) as stripe_api,
    ):
        inv.billing.providers = inv.billing.providers.with_provider(
            "test", StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=stripe_api.url)
        )
        customer = await october_customer(
            inv, credits="20.00", payment_provider="stripe", payment_method="pm_card_visa"
        )
        r = await inv.client.post("/v1/events", json=october_events(customer))
        assert r.status_code == 200, r.text
        await inv.run()

        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "paid"  # the PaymentIntent succeeded on confirmation
        (intent,) = stripe_api.payment_intents.values()
        assert intent["amount"] == 9900  # 99.00 EUR due, in cents
        assert intent["currency"] == "eur"
        assert intent["metadata"]["tallyray_invoice_id"] == invoice["id"]
        payments = (await inv.client.get(f"/v1/invoices/{invoice['id']}/payments")).json()
        assert [(p["attempt"], p["status"]) for p in payments["payments"]] == [(1, "succeeded")]
        # the Stripe customer is remembered for next time
        assert (
            (await inv.client.get(f"/v1/customers/{customer}"))
            .json()["provider_customer_id"]
            .startswith("cus_")
        )

        # Stripe's webhook, signed on the raw body, is processed once.
        (delivery,) = stripe_api.wait_for_webhooks(1)
        headers = {"Stripe-Signature": delivery.headers["Stripe-Signature"]}
        for processed in (1, 0):
            r = await inv.client.post(
                "/v1/providers/stripe/webhook", content=delivery.body, headers=headers
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"received": True, "processed": processed}
        r = await inv.client.post(
            "/v1/providers/stripe/webhook", content=delivery.body + b" ", headers=headers
        )
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_signature"


async def test_a_declined_card_follows_the_dunning_schedule_to_uncollectible(
    inv: Invoicing,
) -> None:
    with FakeStripe(STRIPE_KEY) as stripe_api:
        inv.billing.providers = inv.billing.providers.with_provider(
            "test", StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=stripe_api.url)
        )
        customer = await october_customer(
            inv, payment_provider="stripe", payment_method="pm_card_chargeDeclined"
        )
        await inv.run()
        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "finalized"
        assert invoice["payment"]["attempts"] == 1
        assert invoice["payment"]["next_attempt_at"] is not None

        # Nothing is due until a day has passed.
        r = await inv.client.post("/v1/payments/collect")
        assert r.json() == {"attempted": 0}
        start = inv.billing.clock()
        for day, status in ((1, "finalized"), (2, "uncollectible")):
            inv.billing.clock = lambda day=day: start + day * 86_400_000_001
            r = await inv.client.post("/v1/payments/collect")
            assert r.json() == {"attempted": 1}
            (invoice,) = await inv.invoices(customer)
            assert invoice["status"] == status
        payments = (await inv.client.get(f"/v1/invoices/{invoice['id']}/payments")).json()
        assert [(p["attempt"], p["status"]) for p in payments["payments"]] == [
            (1, "failed"),
            (2, "failed"),
            (3, "failed"),
        ]
        assert payments["payments"][0]["detail"]["failure_code"] == "card_declined"


async def test_an_adyen_payment_pending_until_its_notification(inv: Invoicing) -> None:
    with FakeAdyen() as adyen_api:
        inv.billing.providers = inv.billing.providers.with_provider(
            "test",
            AdyenProvider("AQE_test_tallyray", "TallyrayTest", ADYEN_HMAC, api_base=adyen_api.url),
        )
        customer = await october_customer(inv, payment_provider="adyen", payment_method="pending")
        await inv.run()
        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "finalized"
        reference = invoice["payment"]["reference"]
        assert reference

        # An authorisation for one cent less is not a payment of this invoice.
        cents = int(Decimal(invoice["amount_due"]) * 100)
        short = notification_item(
            psp_reference=reference + "X",
            merchant_reference=invoice["id"],
            value=cents - 1,
            currency="EUR",
        )
        r = await inv.client.post(
            "/v1/providers/adyen/webhook", content=signed_notification([short], ADYEN_HMAC)
        )
        assert r.status_code == 200 and r.text == "[accepted]"
        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "finalized"
        payments = (await inv.client.get(f"/v1/invoices/{invoice['id']}/payments")).json()
        assert [p["status"] for p in payments["payments"]] == ["pending", "mismatch"]

        item = notification_item(
            psp_reference=reference,
            merchant_reference=invoice["id"],
            value=cents,
            currency="EUR",
        )
        body = signed_notification([item], ADYEN_HMAC)
        r = await inv.client.post("/v1/providers/adyen/webhook", content=body)
        assert r.status_code == 200 and r.text == "[accepted]"
        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "paid"

        tampered = body.replace(b'"value": ', b'"value": 1')
        r = await inv.client.post("/v1/providers/adyen/webhook", content=tampered)
        assert r.status_code == 400


# -- payments: each environment with its own credentials ------------------------------------

LIVE_KEY, LIVE_SECRET = "sk_live_tallyray", "whsec_tallyray_live"


def live_and_test_stripe(live_api: FakeStripe, test_api: FakeStripe) -> PaymentProviders:
    """Stripe in both environments, each on a fake of its own account."""
    return PaymentProviders(
        live={"stripe": StripeProvider(LIVE_KEY, LIVE_SECRET, api_base=live_api.url, live=True)},
        test={"stripe": StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=test_api.url)},
    )


def keys_seen(fake: FakeStripe) -> set[str]:
    return {r.headers["authorization"].removeprefix("Bearer ") for r in fake.received}


def stripe_delivery(intent: dict[str, Any], livemode: bool, secret: str, **changes: Any) -> Any:
    """A signed ``payment_intent.succeeded`` for ``intent``, as Stripe would post it."""
    import json
    import time

    from fakes.stripe_server import sign_stripe_payload

    now = int(time.time())  # signatures are checked against the wall clock, not the suite's
    paid = {**intent, "status": "succeeded", "amount_received": intent["amount"], **changes}
    event = {
        "id": unique("evt"),
        "object": "event",
        "type": "payment_intent.succeeded",
        "livemode": livemode,
        "created": now,
        "data": {"object": paid},
    }
    body = json.dumps(event).encode()
    return {
        "content": body,
        "headers": {"Stripe-Signature": sign_stripe_payload(body, secret, now)},
    }


async def test_each_environment_collects_with_its_own_credentials_only(inv: Invoicing) -> None:
    """Stripe and Adyen configured for both environments, each account a fake of its own:
    every call for a test invoice goes to a test account with its test key, and the same
    for live."""
    live = dataclasses.replace(inv, client=inv.live)
    with (
        FakeStripe(STRIPE_KEY) as stripe_test,
        FakeStripe(LIVE_KEY) as stripe_live,
        FakeAdyen("AQE_test_key", "TallyrayTest") as adyen_test,
        FakeAdyen("AQE_live_key", "Tallyray", live=True) as adyen_live,
    ):
        providers = live_and_test_stripe(stripe_live, stripe_test)
        providers = providers.with_provider(
            "test", AdyenProvider("AQE_test_key", "TallyrayTest", ADYEN_HMAC, adyen_test.url)
        )
        inv.billing.providers = providers.with_provider(
            "live",
            AdyenProvider(
                "AQE_live_key",
                "Tallyray",
                "AB" * 32,
                adyen_live.url,
                live=True,
                live_endpoint_prefix="1797a841fbb37ca7-AdyenDemo",
            ),
        )
        card = {"payment_provider": "stripe", "payment_method": "pm_card_visa"}
        stored = {"payment_provider": "adyen", "payment_method": "8415718415172204"}
        test_customers = [
            await october_customer(inv, **card),
            await october_customer(inv, **stored),
        ]
        live_customers = [
            await october_customer(live, **card),
            await october_customer(live, **stored),
        ]

        await inv.run()  # finalizing collects what is due: collect_due("test")
        assert (stripe_live.received, adyen_live.received) == ([], [])
        await live.run()

        test_invoices = [(await inv.invoices(c))[0] for c in test_customers]
        live_invoices = [(await live.invoices(c))[0] for c in live_customers]
        assert {i["status"] for i in test_invoices + live_invoices} == {"paid"}
        # each account saw its own key only, and only its own environment's invoice
        assert (keys_seen(stripe_test), keys_seen(stripe_live)) == ({STRIPE_KEY}, {LIVE_KEY})
        charged = {
            name: [(i["metadata"]["tallyray_invoice_id"], i["livemode"]) for i in intents]
            for name, intents in (
                ("test", stripe_test.payment_intents.values()),
                ("live", stripe_live.payment_intents.values()),
            )
        }
        assert charged == {
            "test": [(test_invoices[0]["id"], False)],
            "live": [(live_invoices[0]["id"], True)],
        }
        adyen = {
            name: [(r.headers["x-api-key"], r.json()["merchantAccount"], r.json()["reference"])
                   for r in fake.received]
            for name, fake in (("test", adyen_test), ("live", adyen_live))
        }  # fmt: skip
        assert adyen == {
            "test": [("AQE_test_key", "TallyrayTest", test_invoices[1]["id"])],
            "live": [("AQE_live_key", "Tallyray", live_invoices[1]["id"])],
        }


async def test_a_test_environment_without_test_credentials_never_uses_live_ones(
    inv: Invoicing,
) -> None:
    with FakeStripe(LIVE_KEY) as live_api, FakeStripe(STRIPE_KEY) as test_api:
        inv.billing.providers = PaymentProviders(
            live={"stripe": StripeProvider(LIVE_KEY, LIVE_SECRET, api_base=live_api.url, live=True)}
        )
        customer = await october_customer(
            inv, payment_provider="stripe", payment_method="pm_card_visa"
        )
        await inv.run()  # finalized, and collect_due("test") tried it

        (invoice,) = await inv.invoices(customer)
        assert (invoice["status"], invoice["payment"]["attempts"]) == ("finalized", 0)
        r = await inv.client.post(f"/v1/invoices/{invoice['id']}/pay")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["message"].startswith(
            "stripe is not configured for the test environment (its payment providers: manual)"
        )
        r = await inv.client.post("/v1/payments/collect")  # the dunning pass
        assert r.status_code == 200, r.text
        assert live_api.received == []

        # With test credentials, the same dunning pass collects it, on the test account.
        inv.billing.providers = live_and_test_stripe(live_api, test_api)
        r = await inv.client.post("/v1/payments/collect")
        assert r.json() == {"attempted": 1}
        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "paid"
        assert (keys_seen(test_api), live_api.received) == ({STRIPE_KEY}, [])


async def test_a_webhook_acts_only_in_the_environment_whose_secret_signed_it(
    inv: Invoicing,
) -> None:
    live = dataclasses.replace(inv, client=inv.live)
    with FakeStripe(STRIPE_KEY) as test_api, FakeStripe(LIVE_KEY) as live_api:
        inv.billing.providers = live_and_test_stripe(live_api, test_api)
        pending = {"payment_provider": "stripe", "payment_method": "pm_card_authenticationRequired"}
        test_customer = await october_customer(inv, **pending)
        live_customer = await october_customer(live, **pending)
        await inv.run()
        await live.run()
        (test_intent,) = test_api.payment_intents.values()
        (live_intent,) = live_api.payment_intents.values()
        test_id = test_intent["metadata"]["tallyray_invoice_id"]

        refused = [
            # signed with the test secret, but claims to be live
            (test_intent, True, STRIPE_SECRET, "is a live-mode event but is signed with the test"),
            # signed with the live secret, but claims to be test
            (test_intent, False, LIVE_SECRET, "is a test-mode event but is signed with the live"),
            # a live event about a test invoice
            (test_intent, True, LIVE_SECRET, f"names invoice {test_id}, which is not a live"),
            # a test event about a live invoice: a test secret never reaches live invoices
            (live_intent, False, STRIPE_SECRET, "which is not a test invoice: refused"),
        ]
        for intent, livemode, secret, message in refused:
            r = await inv.client.post(
                "/v1/providers/stripe/webhook", **stripe_delivery(intent, livemode, secret)
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "webhook_refused"
            assert message in r.json()["error"]["message"]
        for client, customer in ((inv, test_customer), (live, live_customer)):
            (invoice,) = await client.invoices(customer)
            assert invoice["status"] == "finalized"

        for intent, livemode, secret in (
            (test_intent, False, STRIPE_SECRET),
            (live_intent, True, LIVE_SECRET),
        ):
            r = await inv.client.post(
                "/v1/providers/stripe/webhook", **stripe_delivery(intent, livemode, secret)
            )
            assert r.json() == {"received": True, "processed": 1}
        for client, customer in ((inv, test_customer), (live, live_customer)):
            (invoice,) = await client.invoices(customer)
            assert invoice["status"] == "paid"


#: A success webhook against an invoice of 119.00 EUR due (base fee and true-up to the 100.00
#: minimum, 19 % VAT, no credits): 11,900 cents.
PAID_CASES = [
    # (what Stripe says was received, currency; as a decimal; invoice status after, payment row)
    (11_900, "eur", "119.00", "paid", "succeeded"),  # 11,900 = 11,900 cents: the amount due
    (11_899, "eur", "118.99", "finalized", "mismatch"),  # one cent short
    (11_900, "usd", "119.00", "finalized", "mismatch"),  # the same number, another currency
]


async def test_a_payment_webhook_marks_paid_only_the_exact_amount_and_currency(
    inv: Invoicing, caplog: pytest.LogCaptureFixture
) -> None:
    """One run for the whole table (runs are slow): a customer per case, each payment pending
    until Stripe's webhook, and each webhook delivered twice."""
    with FakeStripe(STRIPE_KEY) as stripe_api:
        inv.billing.providers = inv.billing.providers.with_provider(
            "test", StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=stripe_api.url)
        )
        pending = {"payment_provider": "stripe", "payment_method": "pm_card_authenticationRequired"}
        customers = [await october_customer(inv, **pending) for _ in PAID_CASES]
        await inv.run()

        for customer, case in zip(customers, PAID_CASES, strict=True):
            received, currency, received_amount, status, row = case
            (invoice,) = await inv.invoices(customer)
            assert (invoice["status"], invoice["amount_due"]) == ("finalized", "119.00")
            (intent,) = [
                i
                for i in stripe_api.payment_intents.values()
                if i["metadata"]["tallyray_invoice_id"] == invoice["id"]
            ]
            delivery = stripe_delivery(
                intent, False, STRIPE_SECRET, amount_received=received, currency=currency
            )
            for processed in (1, 0):  # the same event twice: processed once
                r = await inv.client.post("/v1/providers/stripe/webhook", **delivery)
                assert r.json() == {"received": True, "processed": processed}, r.text

            (invoice,) = await inv.invoices(customer)
            assert invoice["status"] == status
            payments = (await inv.client.get(f"/v1/invoices/{invoice['id']}/payments")).json()
            assert [p["status"] for p in payments["payments"]] == ["pending", row]
            if row == "mismatch":
                detail = payments["payments"][1]["detail"]
                assert detail["expected"] == {
                    "amount": "119.00",
                    "currency": "EUR",
                    "minor_units": 11_900,
                }
                assert detail["received"] == {
                    "amount": received_amount,
                    "currency": currency.upper(),
                    "minor_units": received,
                }
                assert (invoice["amount_due"], invoice["payment"]["attempts"]) == ("119.00", 1)
    warnings = [r.getMessage() for r in caplog.records if "not marked paid" in r.getMessage()]
    assert len(warnings) == 2


# -- currencies, discounts, late events, anniversaries ---------------------------------------


async def test_a_plan_in_another_currency_is_converted_at_the_stored_rate(inv: Invoicing) -> None:
    customer = unique("cust")
    r = await inv.client.post("/v1/customers", json={"id": customer, "currency": "EUR"})
    assert r.status_code == 201
    sub = {"customer_id": customer, "plan": "starter", "start": OCT_1}  # priced in USD
    r = await inv.client.post("/v1/subscriptions", json=sub)
    assert r.status_code == 409
    assert "POST /v1/exchange-rates" in r.json()["error"]["message"]

    rate = {"from": "USD", "to": "EUR", "rate": "0.9", "source": "ECB", "as_of": OCT_1}
    assert (await inv.client.post("/v1/exchange-rates", json=rate)).status_code == 201
    assert (await inv.client.post("/v1/subscriptions", json=sub)).status_code == 201
    event = {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "timestamp": "2026-10-05T10:00:00Z",
        "properties": {"model": "gpt-4o", "input_tokens": 1_000_000, "output_tokens": 0},
    }
    assert (await inv.client.post("/v1/events", json=[event])).status_code == 200
    # the live balance converts too: 1,000,000 × 0.000002 USD = 2.00 USD = 1.80 EUR
    balance = (await inv.client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["uncovered"] == "1.80"

    await inv.run()
    (invoice,) = await inv.invoices(customer)
    assert invoice["currency"] == "EUR"
    assert invoice["exchange_rate"] == {
        "from": "USD",
        "to": "EUR",
        "rate": "0.9",
        "source": "ECB",
        "as_of": OCT_1,
    }
    assert amounts(invoice) == {"Input tokens": "1.80", "Output tokens": "0.00"}
    assert invoice["total"] == "2.14"  # 1.80 + 19% VAT 0.342 → 0.34


async def test_a_discount_lowers_the_taxable_amount(inv: Invoicing) -> None:
    customer = unique("cust")
    r = await inv.client.post("/v1/customers", json={"id": customer, "currency": "EUR"})
    assert r.status_code == 201
    r = await inv.client.post(
        "/v1/subscriptions",
        json={
            "customer_id": customer,
            "plan": "pro",
            "start": OCT_1,
            "discount": {"percent": "10", "description": "Launch discount 10%"},
        },
    )
    assert r.status_code == 201, r.text
    await inv.run()
    (invoice,) = await inv.invoices(customer)
    # 49.00 base + 51.00 true-up = 100.00; −10% = 90.00; 19% VAT = 17.10
    assert amounts(invoice)["Launch discount 10%"] == "-10.00"
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == ("90.00", "17.10", "107.10")


async def test_an_anniversary_subscription_is_billed_from_its_start(
    inv: Invoicing,
) -> None:
    customer = unique("cust")
    r = await inv.client.post("/v1/customers", json={"id": customer, "currency": "EUR"})
    assert r.status_code == 201
    first = {
        "customer_id": customer,
        "plan": "pro",
        "start": "2026-09-15T00:00:00Z",
        "anchor": "anniversary",
    }
    assert (await inv.client.post("/v1/subscriptions", json=first)).status_code == 201
    await inv.run()  # until 1 Nov: the period 15 Sep – 15 Oct has ended
    (invoice,) = await inv.invoices(customer)
    assert invoice["period"] == {"start": "2026-09-15T00:00:00Z", "end": "2026-10-15T00:00:00Z"}
    base = next(line for line in invoice["lines"] if line["kind"] == "base_fee")
    assert base["amount"] == "49.00" and "proration" not in base


@pytest.mark.parametrize(
    "inv",
    [pytest.param(None, id="suite-clock"), *AROUND_MONTH_AND_YEAR_END],
    indirect=True,
)
async def test_late_events_can_be_booked_to_the_open_period(inv: Invoicing, server: Server) -> None:
    """An event for closed October goes to the first open period, November, whatever the
    day: in November, or on a clock that runs into December, or into 2027."""
    inv.billing.config = dataclasses.replace(inv.billing.config, late_events="book_to_open_period")
    customer = await october_customer(inv)
    await inv.run()  # October closes
    # a new app picks the policy up at build time
    services = Services(
        catalog=inv.billing.catalog,
        router=inv.billing.router,
        rules=IntakeRules(grace_seconds=GRACE),
        billing=inv.billing,
        clock=inv.billing.clock,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(services)),
        base_url="http://tallyray.test",
        headers=inv.client.headers,
    ) as client:
        late = october_events(customer)[:1]
        r = await client.post("/v1/events", json=late)
        assert r.status_code == 200, r.text
        usage = await client.get(
            "/v1/usage",
            params={
                "customer_id": customer,
                "meter": "requests",
                "from": NOV_1,
                "to": "2026-12-01T00:00:00Z",
            },
        )
        assert usage.status_code == 200, usage.text
        before = inv.billing.clock()
        balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
        after = inv.billing.clock()
    # counted on the first day of November, the open period: one request
    days = {p["start"]: p["quantity"] for p in usage.json()["data"] if p["quantity"] != "0"}
    assert days == {NOV_1: "1"}
    # the live balance shows the current period: November's request while it lasts
    december = parse_timestamp("2026-12-01T00:00:00Z")
    shown = balance["usage"].get("requests", {}).get("quantity")
    if after < december:
        assert shown == "1"
    elif before >= december:
        assert shown is None
    (invoice,) = await inv.invoices(customer)  # October's invoice did not change
    assert amounts(invoice)["API requests (per 1,000)"] == "0.00"
    del server


async def test_a_plan_change_mid_period_prorates_both_base_fees(inv: Invoicing) -> None:
    customer = await october_customer(inv)  # pro (49.00) from 1 October
    change = {"customer_id": customer, "plan": "pro", "start": "2026-10-18T00:00:00Z"}
    # re-subscribing (here to the same plan's latest version) ends the first subscription
    assert (await inv.client.post("/v1/subscriptions", json=change)).status_code == 201
    await inv.run()
    (invoice,) = await inv.invoices(customer)
    fees = [line for line in invoice["lines"] if line["kind"] == "base_fee"]
    # 49 × 17/31 = 26.870… and 49 × 14/31 = 22.129…
    assert [(f["amount"], f["proration"]) for f in fees] == [
        ("26.87", {"days": 17, "of_days": 31}),
        ("22.13", {"days": 14, "of_days": 31}),
    ]


@pytest.mark.parametrize("inv", ["2026-10-18T12:00:00Z"], indirect=True)
@pytest.mark.parametrize(
    ("at", "fee"),
    [
        # ended on 18 October at noon: a started day counts, 49 × 18/31 = 28.451…
        ("now", ("28.45", {"days": 18, "of_days": 31})),
        # ended on 1 November: October whole, and nothing after
        ("period_end", ("49.00", None)),
    ],
)
async def test_a_cancelled_subscription_is_invoiced_to_its_end(
    inv: Invoicing, at: str, fee: tuple[str, dict[str, int] | None]
) -> None:
    customer = await october_customer(inv)  # pro (49.00) from 1 October
    (sub,) = (await inv.client.get("/v1/subscriptions", params={"customer_id": customer})).json()[
        "subscriptions"
    ]
    r = await inv.client.post(f"/v1/subscriptions/{sub['id']}/cancel", json={"at": at})
    assert r.status_code == 200, r.text
    # the invoice run comes later, in December, and closes November too
    inv.billing.clock = ShiftedClock(offset_to(parse_timestamp("2026-12-05T00:00:00Z")))
    body = {"until": "2026-12-01T00:00:00Z", "force": True}
    r = await inv.client.post("/v1/invoice-runs", json=body)
    assert r.status_code == 202, r.text
    await inv.billing.wait(r.json()["id"])
    (invoice,) = await inv.invoices(customer)  # October's; none for November
    assert invoice["period"]["start"] == OCT_1
    (base,) = [line for line in invoice["lines"] if line["kind"] == "base_fee"]
    assert (base["amount"], base.get("proration")) == fee


async def test_parallel_chunks_number_every_invoice_once(inv: Invoicing) -> None:
    """Chunks of two customers, two at a time: their transactions take numbers from the
    same sequence concurrently, and none may clash or be skipped."""
    inv.billing.config = dataclasses.replace(inv.billing.config, chunk_size=2)
    customers = [await october_customer(inv) for _ in range(12)]
    run = await inv.run()
    assert (run["status"], run["invoices"], run["errors"]) == ("succeeded", 12, [])
    numbers = sorted([(await inv.invoices(c))[0]["number"] for c in customers])
    assert numbers == [f"INV-{n:06d}" for n in range(1, 13)]


async def test_the_full_month_events_close_run_invoice_pdf_stripe_webhook_paid(
    inv: Invoicing,
) -> None:
    """The whole path in one: October's events → the period closes → the run invoices it →
    the PDF → Stripe asks the customer to authenticate (the payment is pending) → Stripe's
    `payment_intent.succeeded` webhook → paid, announced through the outbox."""
    import json
    import time

    from fakes.stripe_server import sign_stripe_payload

    from tallyray.storage.alerts import AlertStore

    with FakeStripe(STRIPE_KEY) as stripe_api:
        inv.billing.providers = inv.billing.providers.with_provider(
            "test", StripeProvider(STRIPE_KEY, STRIPE_SECRET, api_base=stripe_api.url)
        )
        customer = await october_customer(
            inv,
            credits="20.00",
            payment_provider="stripe",
            payment_method="pm_card_authenticationRequired",
        )
        r = await inv.client.post("/v1/events", json=october_events(customer))
        assert r.status_code == 200, r.text
        run = await inv.run()
        assert run["status"] == "succeeded"

        (invoice,) = await inv.invoices(customer)
        assert (invoice["status"], invoice["amount_due"]) == ("finalized", "99.00")
        pdf = (await inv.client.get(f"/v1/invoices/{invoice['id']}.pdf")).content
        text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
        assert invoice["number"] in text and "99,00" in text
        (intent,) = stripe_api.payment_intents.values()
        assert intent["status"] == "requires_action"
        assert invoice["payment"]["reference"] == intent["id"]

        # The customer authenticates; Stripe tells us with a signed event.
        now = int(time.time())
        event = {
            "id": "evt_" + unique("ok"),
            "object": "event",
            "type": "payment_intent.succeeded",
            "livemode": False,
            "created": now,
            "data": {
                "object": {**intent, "status": "succeeded", "amount_received": intent["amount"]}
            },
        }
        body = json.dumps(event).encode()
        headers = {"Stripe-Signature": sign_stripe_payload(body, STRIPE_SECRET, now)}
        r = await inv.client.post("/v1/providers/stripe/webhook", content=body, headers=headers)
        assert r.json() == {"received": True, "processed": 1}
        (invoice,) = await inv.invoices(customer)
        assert invoice["status"] == "paid"
        announced = {m["type"] for m in AlertStore(inv.billing.catalog.engine).messages("test")}
        assert {"invoice.finalized", "invoice.paid"} <= announced


async def test_the_audit_trail_of_a_customers_whole_life(inv: Invoicing) -> None:
    """Every change, through the API and the portal, in order, with who and which request."""
    client = inv.client
    customer = await october_customer(inv, payment_provider="manual")  # created, subscribed

    async def ok(method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        r = await client.request(method, path, json=body, headers={"X-Request-Id": path}, **kw)
        assert r.status_code in (200, 201, 202), r.text
        return dict(r.json())

    await ok("POST", "/v1/customers", {"id": customer, "currency": "EUR", "credit_limit": "500"})
    await ok("POST", f"/v1/customers/{customer}/credits", {"amount": "25.00"})
    rule = await ok(
        "POST", f"/v1/customers/{customer}/alert-rules", {"kind": "spend_above", "threshold": "50"}
    )
    await ok("DELETE", f"/v1/customers/{customer}/alert-rules/{rule['id']}")
    endpoint = await ok(
        "POST",
        "/v1/webhook-endpoints",
        {"url": "https://93.184.216.34/hooks", "event_types": ["invoice.paid"]},
    )
    await ok("POST", f"/v1/webhook-endpoints/{endpoint['id']}/disable", {"reason": "migrating"})
    await ok("POST", f"/v1/webhook-endpoints/{endpoint['id']}/enable")
    await ok("DELETE", f"/v1/webhook-endpoints/{endpoint['id']}")
    await ok("POST", "/v1/exchange-rates", {"from": "USD", "to": "EUR", "rate": "0.92"})
    portal = await ok("POST", "/v1/portal-sessions", {"customer_id": customer})
    r = await client.post(f"{portal['url']}/spend-cap", data={"spend_cap": "300"})
    assert r.status_code == 303, r.text
    run = await inv.run()
    (invoice,) = await inv.invoices(customer)
    iid = invoice["id"]
    note = await ok(
        "POST", f"/v1/invoices/{iid}/credit-notes", {"reason": "goodwill", "amount": "1.00"}
    )
    await ok("POST", f"/v1/invoices/{iid}/mark-paid")

    r = await client.get("/v1/audit-events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    mine = [
        e
        for e in r.json()["events"]
        if customer in (e["object"]["id"], e["summary"].get("customer_id"))
        or e["object"]["id"] in (endpoint["id"], iid, note["id"], run["id"], "USD/EUR")
    ]
    assert [(e["action"], e["object"]["type"]) for e in mine] == [
        ("customer.created", "customer"),
        ("subscription.created", "subscription"),
        ("customer.updated", "customer"),
        ("credit_grant.created", "credit_grant"),
        ("alert_rule.created", "alert_rule"),
        ("alert_rule.deleted", "alert_rule"),
        ("webhook_endpoint.created", "webhook_endpoint"),
        ("webhook_endpoint.disabled", "webhook_endpoint"),
        ("webhook_endpoint.enabled", "webhook_endpoint"),
        ("webhook_endpoint.deleted", "webhook_endpoint"),
        ("exchange_rate.created", "exchange_rate"),
        ("portal_session.created", "customer"),
        ("customer.spend_cap_set", "customer"),
        ("invoice_run.started", "invoice_run"),
        ("credit_note.created", "credit_note"),
        ("invoice.marked_paid", "invoice"),
    ]
    by_action = {e["action"]: e for e in mine}
    cap = by_action["customer.spend_cap_set"]
    assert cap["actor"] == {"type": "portal", "id": f"portal:{customer}", "name": "Müller & Söhne"}
    assert cap["summary"] == {"spend_cap": "300"}
    assert {e["actor"]["type"] for e in mine if e is not cap} == {"key"}
    assert by_action["customer.updated"]["summary"]["credit_limit"] == "500"
    assert by_action["customer.updated"]["request_id"] == "/v1/customers"
    assert by_action["invoice.marked_paid"]["summary"] == {"from": "finalized", "to": "paid"}
    assert by_action["credit_note.created"]["object"]["id"] == note["id"]
    assert by_action["webhook_endpoint.disabled"]["summary"] == {"reason": "migrating"}
    # the one object's trail, and nothing to change or delete it with
    r = await client.get("/v1/audit-events", params={"object_type": "invoice", "object_id": iid})
    assert [e["action"] for e in r.json()["events"]] == ["invoice.marked_paid"]
    assert (await client.delete("/v1/audit-events")).status_code == 405


async def test_events_of_a_closed_period_sent_again_are_duplicates(inv: Invoicing) -> None:
    """A retry after an outage, of events stored before their period closed: duplicates,
    not a refusal for a closed period (which new events for it still get)."""
    customer = await october_customer(inv)
    events = october_events(customer)
    r = await inv.client.post("/v1/events", json=events)
    assert r.json() == {"ingested": 5, "duplicates": 0}
    await inv.run()  # October closes
    r = await inv.client.post("/v1/events", json=events)
    assert (r.status_code, r.json()) == (200, {"ingested": 0, "duplicates": 5})
    late = {**events[0], "id": unique("late")}
    r = await inv.client.post("/v1/events", json=[late, *events[1:]])
    assert r.status_code == 422 and "closed billing period" in r.text
    (invoice,) = await inv.invoices(customer)
    assert invoice["lines"]  # the invoice stands as it was
