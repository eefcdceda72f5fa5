"""The customer portal on each store: sessions, pages, forms, and what a token may not see.

The portal routes are mounted on an app of their own here (with an ``authenticate`` that maps
the bearer key through the catalog), next to the fixture's real API app, which creates the
customers, events and rules. Both talk to the same store and the same shard actors.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from support import (
    POSTGRES_URL,
    Server,
    create_postgres_database,
    drop_postgres_database,
    make_customer,
    unique,
)

from tallyray.cluster import Settings, prepare_store
from tallyray.errors import Unauthorized
from tallyray.portal.tokens import PortalKeys
from tallyray.pricing.events import parse_timestamp
from tallyray.serve.routes import portal as portal_routes
from tallyray.storage import tables as t
from tallyray.storage.keys import KeyStore

pytestmark = pytest.mark.anyio

HOUR_US = 3_600_000_000


@dataclass
class Portal:
    api: httpx.AsyncClient
    """The real API app, with the test key."""
    web: httpx.AsyncClient
    """An app with only the portal's routes; its requests carry the test key too."""
    server: Server

    async def session(self, customer_id: str, **body: Any) -> str:
        r = await self.web.post("/v1/portal-sessions", json={"customer_id": customer_id, **body})
        assert r.status_code == 201, r.text
        return str(r.json()["url"])

    async def page(self, url: str, status: int = 200) -> str:
        r = await self.web.get(url, headers={"Authorization": ""})  # the token is enough
        assert r.status_code == status, r.text
        return r.text


@pytest.fixture
async def portal(server: Server) -> AsyncIterator[Portal]:
    app = FastAPI()

    async def authenticate(request: Request) -> str:
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        found = await run_in_threadpool(KeyStore(server.catalog.engine).find, secret.strip())
        env = None if found is None else found.env
        if scheme.lower() != "bearer" or env not in ("live", "test"):
            raise Unauthorized("send your API key as 'Authorization: Bearer trk_…'")
        return env

    portal_routes.include(app, server.services, authenticate)
    async with (
        server.client() as api,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://tallyray.test",
            headers={"Authorization": f"Bearer {server.test_key}"},
            timeout=120,
        ) as web,
    ):
        yield Portal(api, web, server)


def completion(customer: str, model: str, inp: int, out: int) -> dict[str, Any]:
    return {
        "id": unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": model, "input_tokens": inp, "output_tokens": out},
    }


class _Controls(HTMLParser):
    """Form controls, labels and external references of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.refs: list[str] = []
        self.scripts = 0
        self.lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append(a)
        if tag == "label" and a.get("for"):
            self.label_for.add(str(a["for"]))
        if tag == "script":
            self.scripts += 1
        for name in ("href", "src", "action"):
            if a.get(name):
                self.refs.append(str(a[name]))


def check_page(html: str) -> _Controls:
    """What every portal page promises: a language, a label on every control, no script,
    nothing loaded from elsewhere."""
    parsed = _Controls()
    parsed.feed(html)
    assert parsed.lang == "en"
    assert parsed.scripts == 0
    for control in parsed.controls:
        assert control.get("id") in parsed.label_for, f"no label for {control}"
    for ref in parsed.refs:
        assert ref.startswith(("/portal/", "#", "data:")), ref
    assert 'href="#main"' in html and 'id="main"' in html  # the skip link
    return parsed


# -- sessions ----------------------------------------------------------------------------


async def test_a_session_opens_an_overview_with_the_right_balance(portal: Portal) -> None:
    customer = await make_customer(portal.api, credits="100.00", name="Acme AI")
    expires = "2031-01-01T00:00:00Z"
    r = await portal.api.post(
        f"/v1/customers/{customer}/credits", json={"amount": "5.00", "expires_at": expires}
    )
    assert r.status_code == 201, r.text
    # 3 × (1,000 × 0.0000025 + 500 × 0.00001) = 0.0225 + 1 package of requests 2.00 = 2.0225
    events = [completion(customer, "gpt-4o", 1000, 500) for _ in range(3)]
    assert (await portal.api.post("/v1/events", json=events)).status_code == 200

    before = portal.server.clock() / 1e6
    r = await portal.web.post("/v1/portal-sessions", json={"customer_id": customer})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["customer_id"] == customer and body["url"].startswith("/portal/")
    assert r.headers["cache-control"] == "no-store"
    lifetime = _epoch(body["expires_at"]) - before
    assert 3590 < lifetime < 3610  # the default: one hour

    r = await portal.web.get(body["url"], headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"]  # no script at all
    assert r.headers["referrer-policy"] == "no-referrer"
    html = r.text
    check_page(html)
    # Burned by priority then expiry: 100 + 5 − 2.0225 = 102.9775 → 102.98
    assert re.search(r'id="credits-remaining">€102\.98<', html)
    assert re.search(r'id="period-spend">€2\.02<', html)
    assert "Acme AI" in html
    assert "Jan 1, 2031" in html  # the expiring grant, localized (en)
    assert "No spend cap is set." in html
    assert 'aria-current="page"' in html


async def test_amounts_and_dates_follow_the_customer_locale(portal: Portal) -> None:
    customer = await make_customer(portal.api, credits="1234.50", locale="de_DE")
    html = await portal.page(await portal.session(customer))
    check_page(html)
    assert re.search(r'id="credits-remaining">1\.234,50\xa0€<', html)
    assert 'lang="de-DE"' in html  # localized values are marked as German


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({}, 422, "customer_id"),
        ({"customer_id": ""}, 422, "customer_id"),
        ({"customer_id": "x", "ttl_seconds": 0}, 422, "ttl_seconds"),
        ({"customer_id": "x", "ttl_seconds": 86_401}, 422, "ttl_seconds"),
        ({"customer_id": "x", "ttl_seconds": "60"}, 422, "ttl_seconds"),
        ({"customer_id": "x", "ttl_seconds": True}, 422, "ttl_seconds"),
        ({"customer_id": "x", "scope": "all"}, 422, "scope"),
        ({"customer_id": "nobody-at-all"}, 404, None),
    ],
)
async def test_session_requests_are_checked(
    portal: Portal, body: dict[str, Any], status: int, where: str | None
) -> None:
    r = await portal.web.post("/v1/portal-sessions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    if where is not None:
        assert where in [d["where"] for d in error["details"]]


async def test_a_session_needs_an_api_key(portal: Portal) -> None:
    r = await portal.web.post(
        "/v1/portal-sessions", json={"customer_id": "x"}, headers={"Authorization": ""}
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    r = await portal.web.post("/v1/portal-sessions", content=b"{", headers={})
    assert r.status_code == 422


async def test_a_session_lasts_its_ttl(portal: Portal) -> None:
    customer = await make_customer(portal.api)
    r = await portal.web.post(
        "/v1/portal-sessions", json={"customer_id": customer, "ttl_seconds": 86_400}
    )
    assert 86_390 < _epoch(r.json()["expires_at"]) - portal.server.clock() / 1e6 < 86_410
    r = await portal.web.post(
        "/v1/portal-sessions", json={"customer_id": customer, "ttl_seconds": 1}
    )
    url = r.json()["url"]
    await portal.page(url)
    await asyncio.sleep(1.1)
    html = await portal.page(url, 401)
    assert "This link has expired" in html


# -- tokens that do not open anything ----------------------------------------------------


async def test_tampered_and_expired_tokens_get_a_401_page(portal: Portal) -> None:
    customer = await make_customer(portal.api)
    url = await portal.session(customer)
    token = url.rsplit("/", 1)[1]
    payload, signature = token.split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    keys = await run_in_threadpool(PortalKeys.load, portal.server.catalog.engine)
    now = portal.server.clock()
    cases = {
        "tampered": f"/portal/{payload}.{flipped}",
        "truncated": f"/portal/{token[:-3]}",
        "garbage": "/portal/not-a-token",
        # the customer exists in test only
        "other env": f"/portal/{keys.issue('live', customer, now + HOUR_US)}",
        "expired": f"/portal/{keys.issue('test', customer, now - 1)}",
    }
    for name, bad in cases.items():
        for suffix in ("", "/usage", "/invoices", "/alerts", "/invoices/inv_x.pdf"):
            r = await portal.web.get(bad + suffix, headers={"Authorization": ""})
            assert r.status_code == 401, (name, suffix, r.text)
            assert r.headers["content-type"].startswith("text/html")
            check_page(r.text)
            expected = "This link has expired" if name == "expired" else "This link is not valid"
            assert expected in r.text, name
    # A form posted with a bad token changes nothing.
    r = await portal.web.post(
        f"{cases['tampered']}/alerts", data={"kind": "balance_below", "threshold": "1"}
    )
    assert r.status_code == 401
    assert await portal.server.services.alerts.list("test", customer) == []  # type: ignore[union-attr]
    # The genuine link still works.
    await portal.page(url)


async def test_keys_are_made_once_and_shared(server: Server, tmp_path: Path) -> None:
    """Replicas racing to make the signing key all end up with the same one."""
    if server.store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path}/keys.db"
    settings = Settings.load(database_url=url, shards=1, config_path=server.settings.config_path)
    catalog = prepare_store(settings)
    try:
        barrier = threading.Barrier(6)
        found: list[bytes] = []

        def load() -> None:
            barrier.wait()
            found.append(PortalKeys.load(catalog.engine).key)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(found) == 6 and len(set(found)) == 1 and len(found[0]) == 32
        assert PortalKeys.load(catalog.engine).key == found[0]
        with catalog.engine.connect() as conn:
            rows = conn.execute(t.server_secrets.select()).all()
        assert [row.name for row in rows] == ["portal"]
    finally:
        catalog.engine.dispose()
        if server.store == "postgres" and POSTGRES_URL is not None:
            drop_postgres_database(POSTGRES_URL, url)


# -- invoices ----------------------------------------------------------------------------


def _invoice_doc(customer: str, total: str, start: str, end: str) -> dict[str, Any]:
    return {
        "object": "invoice",
        "customer_id": customer,
        "period_start": _micros(start),
        "period_end": _micros(end),
        "customer": {"id": customer, "name": f"Customer {customer}"},
        "currency": "EUR",
        "locale": "en",
        "period": {"start": start, "end": end},
        "lines": [{"description": "Base fee", "amount": total, "kind": "base_fee"}],
        "subtotal": total,
        "total": total,
        "amount_due": total,
    }


async def test_only_the_customers_own_invoices(portal: Portal) -> None:
    mine, theirs = await make_customer(portal.api), await make_customer(portal.api)
    store = portal.server.services.billing.store  # type: ignore[union-attr]
    oct_, nov, dec = "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"
    now = portal.server.clock()

    def add(docs: list[dict[str, Any]], finalize: bool) -> None:
        store.add_invoices(
            "test",
            docs,
            run_id=None,
            finalize=finalize,
            prefix="PT-",
            entity="portal-it",
            due_days=14,
            now=now,
        )

    await run_in_threadpool(
        add,
        [_invoice_doc(mine, "49.00", oct_, nov), _invoice_doc(theirs, "77.00", oct_, nov)],
        True,
    )
    await run_in_threadpool(add, [_invoice_doc(mine, "12.00", nov, dec)], False)  # a draft
    invoices = {
        doc["customer_id"] + doc["status"]: doc
        for c in (mine, theirs)
        for doc in (await run_in_threadpool(store.invoices, "test", c)).items
    }
    my_invoice = invoices[mine + "finalized"]
    my_draft = invoices[mine + "draft"]
    their_invoice = invoices[theirs + "finalized"]

    url = await portal.session(mine)
    html = await portal.page(f"{url}/invoices")
    check_page(html)
    assert my_invoice["number"] in html and "€49.00" in html
    assert their_invoice["number"] not in html and "€77.00" not in html
    assert my_draft["id"] not in html  # drafts are not the customer's yet
    assert "Oct 1, 2026 – Oct 31, 2026" in html

    r = await portal.web.get(f"{url}/invoices/{my_invoice['id']}.html")
    assert r.status_code == 200 and "49.00" in r.text
    r = await portal.web.get(f"{url}/invoices/{my_invoice['id']}.pdf")
    assert r.status_code == 200 and r.content.startswith(b"%PDF")
    assert r.headers["content-type"] == "application/pdf"
    assert f'filename="{my_invoice["number"]}.pdf"' in r.headers["content-disposition"]

    for other in (their_invoice["id"], my_draft["id"], "inv_doesnotexist"):
        for ext in ("html", "pdf"):
            r = await portal.web.get(f"{url}/invoices/{other}.{ext}")
            assert r.status_code == 404, (other, ext)
            assert r.headers["content-type"].startswith("text/html")
            assert "77.00" not in r.text


# -- alerts ------------------------------------------------------------------------------


async def test_add_and_remove_an_alert_through_the_forms(portal: Portal) -> None:
    customer = await make_customer(portal.api, credits="20.00")
    url = await portal.session(customer)
    html = await portal.page(f"{url}/alerts")
    check_page(html)
    assert "You have no alerts." in html

    r = await portal.web.post(
        f"{url}/alerts", data={"kind": "balance_below", "threshold": "10", "name": "Low balance"}
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"{url}/alerts?done=alert-added"
    html = await portal.page(r.headers["location"])
    assert "Alert added." in html
    assert "Low balance" in html and "Available balance below €10.00" in html

    r = await portal.web.post(
        f"{url}/alerts",
        data={"kind": "usage_above", "threshold": "1,000,000", "meter": "input_tokens"},
    )
    assert r.status_code == 303
    html = await portal.page(f"{url}/alerts")
    assert "input_tokens usage above 1,000,000" in html

    # The API sees what the portal made, and the shard evaluates it.
    r = await portal.api.get(f"/v1/customers/{customer}/alert-rules")
    rules = r.json()["rules"]
    assert [(x["kind"], x["threshold"], x["name"]) for x in rules] == [
        ("balance_below", "10", "Low balance"),
        ("usage_above", "1000000", None),
    ]

    r = await portal.web.post(f"{url}/alerts/{rules[0]['id']}/delete")
    assert r.status_code == 303 and r.headers["location"].endswith("?done=alert-deleted")
    html = await portal.page(r.headers["location"])
    assert "Alert removed." in html and "Low balance" not in html
    r = await portal.web.post(f"{url}/alerts/{rules[0]['id']}/delete")  # twice
    assert r.headers["location"].endswith("?done=alert-gone")
    r = await portal.api.get(f"/v1/customers/{customer}/alert-rules")
    assert [x["id"] for x in r.json()["rules"]] == [rules[1]["id"]]


async def test_thresholds_are_typed_and_shown_in_the_customers_locale(portal: Portal) -> None:
    customer = await make_customer(portal.api, locale="de_DE")
    url = await portal.session(customer)
    for form in (
        {"kind": "spend_above", "threshold": "1.234,5"},  # German grouping and decimal comma
        {"kind": "balance_below", "threshold": "10.50"},  # a plain decimal point works too
        {"kind": "credits_used_percent", "threshold": "12,5"},
    ):
        r = await portal.web.post(f"{url}/alerts", data=form)
        assert r.status_code == 303, r.text
    r = await portal.api.get(f"/v1/customers/{customer}/alert-rules")
    assert [x["threshold"] for x in r.json()["rules"]] == ["1234.5", "10.50", "12.5"]
    html = await portal.page(f"{url}/alerts")
    assert "Period spend above 1.234,50\xa0€" in html
    assert "Available balance below 10,50\xa0€" in html
    assert "Credits used at 12,5\xa0%" in html


async def test_another_customers_alert_cannot_be_removed(portal: Portal) -> None:
    mine, theirs = await make_customer(portal.api), await make_customer(portal.api)
    r = await portal.api.post(
        f"/v1/customers/{theirs}/alert-rules", json={"kind": "spend_above", "threshold": "5"}
    )
    rule_id = r.json()["id"]
    url = await portal.session(mine)
    assert rule_id not in await portal.page(f"{url}/alerts")
    r = await portal.web.post(f"{url}/alerts/{rule_id}/delete")
    assert r.status_code == 303 and r.headers["location"].endswith("?done=alert-gone")
    r = await portal.api.get(f"/v1/customers/{theirs}/alert-rules")
    assert [x["id"] for x in r.json()["rules"]] == [rule_id]


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"kind": "balance_below", "threshold": ""}, "threshold", "Enter a threshold."),
        ({"kind": "balance_below", "threshold": "ten"}, "threshold", "Enter a number such as"),
        ({"kind": "nonsense", "threshold": "1"}, "kind", "must be one of"),
        ({"kind": "usage_above", "threshold": "5"}, "meter", "must name a meter"),
        (
            {"kind": "spend_above", "threshold": "5", "meter": "input_tokens"},
            "meter",
            "only usage_above rules name a meter",
        ),
        ({"kind": "credits_used_percent", "threshold": "150"}, "threshold", "from 0 to 100"),
        ({"kind": "spend_above", "threshold": "-1"}, "threshold", "must not be negative"),
    ],
)
async def test_a_bad_alert_form_is_shown_again_with_the_message_by_its_field(
    portal: Portal, form: dict[str, str], field: str, message: str
) -> None:
    customer = await make_customer(portal.api)
    url = await portal.session(customer)
    r = await portal.web.post(f"{url}/alerts", data={**form, "name": "kept <b>as typed</b>"})
    assert r.status_code == 422, r.text
    html = r.text
    check_page(html)
    error = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', html, re.S)
    assert error is not None and message in error.group(1), html
    control = re.search(rf'<(?:input|select)[^>]*id="{field}"[^>]*>', html, re.S)
    assert control is not None
    assert 'aria-invalid="true"' in control.group(0)
    assert f"{field}-error" in control.group(0)  # aria-describedby names the message
    assert "kept &lt;b&gt;as typed&lt;/b&gt;" in html  # what was typed stays, escaped
    assert 'role="alert"' in html  # the summary at the top
    assert await portal.server.services.alerts.list("test", customer) == []  # type: ignore[union-attr]


# -- the spend cap -----------------------------------------------------------------------


async def test_the_spend_cap_is_set_then_seen_by_the_shard_then_removed(portal: Portal) -> None:
    customer = await make_customer(
        portal.api,
        billing_mode="postpaid",
        name="Capped Ltd",
        email="ap@capped.example",
        country="FR",
        locale="fr_FR",
    )
    url = await portal.session(customer)
    r = await portal.web.post(f"{url}/spend-cap", data={"action": "set", "spend_cap": "1 250,5"})
    assert r.status_code == 303 and r.headers["location"] == f"{url}?done=cap-set"

    balance = (await portal.api.get(f"/v1/customers/{customer}/balance")).json()
    assert (balance["spend_cap"], balance["spend_limit"]) == ("1250.50", "1250.50")
    record = (await portal.api.get(f"/v1/customers/{customer}")).json()
    assert (record["spend_cap"], record["credit_limit"]) == ("1250.5", None)
    assert (record["name"], record["email"], record["country"], record["locale"]) == (
        "Capped Ltd",
        "ap@capped.example",
        "FR",
        "fr_FR",
    )
    assert record["billing_mode"] == "postpaid"
    assert record["subscription"]["plan"] == "pro"
    html = await portal.page(r.headers["location"])
    assert "Spend cap saved." in html
    assert "1\u202f250,50\xa0€" in html  # French grouping: a narrow no-break space

    r = await portal.web.post(f"{url}/spend-cap", data={"action": "remove"})
    assert r.headers["location"] == f"{url}?done=cap-removed"
    balance = (await portal.api.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["spend_limit"] is None
    assert "No spend cap is set." in await portal.page(url)
    # the customer's changes are in the audit log, as the portal's
    r = await portal.api.get(
        "/v1/audit-events", params={"object_type": "customer", "object_id": customer}
    )
    trail = [(e["action"], e["actor"]["type"], e["actor"]["id"]) for e in r.json()["events"]]
    assert trail[-2:] == [
        ("customer.spend_cap_set", "portal", f"portal:{customer}"),
        ("customer.spend_cap_removed", "portal", f"portal:{customer}"),
    ]


async def test_the_portal_never_raises_or_removes_the_operators_credit_limit(
    portal: Portal,
) -> None:
    customer = await make_customer(portal.api, billing_mode="postpaid", credit_limit="100.00")
    url = await portal.session(customer)
    html = await portal.page(url)
    assert "Your provider's credit limit is" in html and "100.00" in html
    # a cap above the operator's limit does not raise it: the smaller applies
    r = await portal.web.post(f"{url}/spend-cap", data={"action": "set", "spend_cap": "500"})
    assert r.status_code == 303
    balance = (await portal.api.get(f"/v1/customers/{customer}/balance")).json()
    assert (balance["credit_limit"], balance["spend_cap"], balance["spend_limit"]) == (
        "100.00",
        "500.00",
        "100.00",
    )
    assert "it applies before your cap" in await portal.page(url)
    # removing the cap removes only the cap
    await portal.web.post(f"{url}/spend-cap", data={"action": "remove"})
    # a form that names the operator's limit changes nothing of it
    r = await portal.web.post(
        f"{url}/spend-cap", data={"action": "set", "spend_cap": "50", "credit_limit": ""}
    )
    assert r.status_code == 303
    record = (await portal.api.get(f"/v1/customers/{customer}")).json()
    assert (record["credit_limit"], record["spend_cap"], record["spend_limit"]) == (
        "100.00",
        "50",
        "50",
    )
    # and an operator's update leaves the customer's cap alone
    r = await portal.api.post(
        "/v1/customers", json={"id": customer, "currency": "EUR", "credit_limit": "80.00"}
    )
    assert r.status_code == 201, r.text
    record = r.json()
    assert (record["credit_limit"], record["spend_cap"]) == ("80.00", "50")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Enter an amount"),
        ("lots", "Enter an amount such as 100.00"),
        ("-5", "cannot be negative"),
        ("1.234", "at most 2 decimal places"),
        ("1" + "0" * 20, "Enter an amount such as 100.00"),  # beyond any sensible cap
    ],
)
async def test_a_bad_spend_cap_is_shown_again(portal: Portal, value: str, message: str) -> None:
    customer = await make_customer(portal.api)
    url = await portal.session(customer)
    r = await portal.web.post(f"{url}/spend-cap", data={"action": "set", "spend_cap": value})
    assert r.status_code == 422
    check_page(r.text)
    error = re.search(r'id="spend_cap-error">(.*?)</p>', r.text, re.S)
    assert error is not None and message in error.group(1)
    assert (await portal.api.get(f"/v1/customers/{customer}")).json()["spend_cap"] is None


# -- usage -------------------------------------------------------------------------------


async def test_usage_charts_per_meter_and_model(portal: Portal) -> None:
    customer = await make_customer(portal.api, credits="50.00")
    events = [completion(customer, "gpt-4o", 1000, 10) for _ in range(2)]
    events += [completion(customer, "gpt-4o-mini", 5000, 20)]
    assert (await portal.api.post("/v1/events", json=events)).status_code == 200
    url = await portal.session(customer)
    html = await portal.page(f"{url}/usage")
    check_page(html)
    # meters with usage only: input_tokens, output_tokens (by model) and requests
    assert re.findall(r"<h2 id=\"meter-\d+\">(.*?)</h2>", html) == [
        "input_tokens",
        "output_tokens",
        "requests",
    ]
    assert "input_tokens per day by model" in html
    assert '<ul class="legend">' in html and ">gpt-4o-mini</li>" in html
    day = time.gmtime(
        portal.server.clock() / 1e6
    ).tm_mday  # calendar month: one bar group per day so far
    assert html.count('<g class="day"') == 3 * day
    assert 'Total this period: <strong lang="en">7,000</strong>' in html  # 2,000 + 5,000
    assert "<table" in html and "data table" in html


async def test_a_customer_without_usage_sees_so(portal: Portal) -> None:
    customer = await make_customer(portal.api)
    html = await portal.page(f"{await portal.session(customer)}/usage")
    assert "No usage recorded in this period yet." in html


# -- the stylesheet ----------------------------------------------------------------------


async def test_the_stylesheet_is_served_by_tallyray(portal: Portal) -> None:
    r = await portal.web.get("/portal/static/portal.css", headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "@import" not in r.text and "url(" not in r.text  # no fonts or images from elsewhere
    assert ".skip-link" in r.text and ":focus-visible" in r.text


def _epoch(iso: str) -> float:
    return _micros(iso) / 1_000_000


def _micros(iso: str) -> int:
    return parse_timestamp(iso)
