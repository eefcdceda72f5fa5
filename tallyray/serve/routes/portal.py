"""The customer portal: ``POST /v1/portal-sessions`` makes a signed, expiring link for one
customer; the link opens server-rendered pages that show that customer, and nothing else.

Pages (all under ``/portal/{token}``, HTML, no script):

- ``""``: balance, credits and their expiry, period spend and its forecast, the spend cap
  (``POST …/spend-cap`` sets or removes it);
- ``/usage``: a chart per meter by day for the current period, by group when the meter has
  ``group_by``;
- ``/invoices`` and ``/invoices/{id}.html`` / ``.pdf``: the customer's own invoices;
- ``/alerts``: alert rules; ``POST …/alerts`` adds one, ``POST …/alerts/{id}/delete``
  removes one;
- ``/credit``: "Add credit": ``POST …/credit`` starts a top-up and shows
  ``/credit/{top_up_id}``, the link to the provider's hosted page; the provider sends the
  customer back there, and it shows the top-up's status (the credit is booked by the
  provider's webhook, never by coming back).

Forms post, then redirect to a page (POST-redirect-GET); a form that does not validate
re-renders its page with each message next to its field (422). A missing, tampered or expired
token gets a 401 page; another customer's invoice, or one that does not exist, a 404 page. The
token is the only credential (no cookie), so a cross-site form cannot act for the customer.
Amounts, numbers and dates follow the customer's ``locale`` (Babel); labels are English.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any, assert_never
from urllib.parse import parse_qs

import jinja2
import orjson
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_skeleton
from babel.numbers import NumberFormatError, format_decimal, format_percent, parse_decimal
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tallyray.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Problem,
    RateLimited,
    StoreUnavailable,
    TallyrayError,
    Unauthorized,
)
from tallyray.invoicing.documents import format_money, format_quantity, render_html, render_pdf
from tallyray.portal.charts import bar_chart, chart_data
from tallyray.portal.forecast import period_forecast
from tallyray.portal.tokens import ExpiredToken, InvalidToken, PortalKeys, PortalSession
from tallyray.pricing.alert_rules import RULE_KINDS, is_kind
from tallyray.pricing.events import format_timestamp, parse_timestamp
from tallyray.pricing.money import currency, parse_amount
from tallyray.pricing.periods import Period, period_of
from tallyray.serve.alert_rules import AlertRules
from tallyray.serve.api import Authenticate, Services
from tallyray.serve.auth import RateLimiter, audit_entry
from tallyray.storage.alerts import AlertStore
from tallyray.storage.audit import Actor, AuditEntry, AuditLog
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import CustomerRecord, EnvCatalog
from tallyray.storage.db import DatabaseUnavailable
from tallyray.storage.pages import PageRequest
from tallyray.storage.usage import usage_series

__all__ = ["DEFAULT_TTL_SECONDS", "MAX_TTL_SECONDS", "include", "router"]

log = logging.getLogger("tallyray.portal")

DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 86_400
DEFAULT_LOCALE = "en"
MAX_FORM_BYTES = 16_384
_US = 1_000_000
_DAY_US = 86_400 * _US

#: The portal's pages load nothing but their own stylesheet, run no script, and post forms
#: only to themselves.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: Invoice documents carry their own inline styles.
DOCUMENT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}

KIND_LABELS = {
    "balance_below": "Available balance falls below (amount)",
    "spend_above": "Period spend rises above (amount)",
    "usage_above": "Usage of a meter rises above (quantity)",
    "credits_used_percent": "Credits used reach (percent)",
}
NOTICES = {
    "alert-added": "Alert added.",
    "alert-deleted": "Alert removed.",
    "alert-gone": "That alert had already been removed.",
    "cap-set": "Spend cap saved.",
    "cap-removed": "Spend cap removed.",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- rendering


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tallyray.portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _stylesheet() -> bytes:
    return resources.files("tallyray.portal").joinpath("static/portal.css").read_bytes()


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = _templates().get_template(template).render(**context)
    return HTMLResponse(
        body, status_code=status, headers={**_HEADERS, "Content-Security-Policy": PAGE_CSP}
    )


@cache
def _locale(code: str) -> Locale:
    try:
        return Locale.parse(code.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(DEFAULT_LOCALE)


def _moment(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


@dataclasses.dataclass(frozen=True)
class _Format:
    """Amounts, numbers and dates for one customer's locale and currency."""

    locale: str
    currency: str

    @property
    def babel(self) -> Locale:
        return _locale(self.locale)

    @property
    def lang(self) -> str:
        return str(self.babel).replace("_", "-")

    def money(self, amount: object) -> str:
        return format_money(str(amount), self.currency, self.locale)

    def quantity(self, value: object) -> str:
        return format_quantity(str(value), self.locale)

    def number(self, value: Decimal) -> str:
        return str(format_decimal(value, locale=self.babel, decimal_quantization=False))

    def percent(self, fraction: Decimal, *, exact: bool = False) -> str:
        return str(format_percent(fraction, locale=self.babel, decimal_quantization=not exact))

    def day(self, value: date) -> str:
        return str(format_date(value, format="medium", locale=self.babel))

    def short_day(self, value: date) -> str:
        return str(format_skeleton("MMMd", value, locale=self.babel))

    def long_day(self, us: int) -> str:
        return str(format_date(_moment(us).date(), format="long", locale=self.babel))

    def moment(self, us: int) -> str:
        text = format_datetime(_moment(us), format="medium", tzinfo=UTC, locale=self.babel)
        return f"{text} UTC"

    def iso(self, us: int) -> str:
        return format_timestamp(us)

    def period(self, start: int, end: int) -> str:
        """``end`` is exclusive: the last day shown is that of the last moment before it."""
        return f"{self.long_day(start)} – {self.long_day(end - 1)}"

    def example_amount(self) -> str:
        return str(format_decimal(Decimal("100.00"), format="#,##0.00", locale=self.babel))


def _number(text: str, locale: Locale) -> Decimal:
    """A number typed into a form: in the customer's locale (``1.234,5`` in German), or
    plainly with a decimal point (``1234.5``)."""
    text = text.strip().replace("\u00a0", "").replace(" ", "")
    if not text:
        raise ValueError("empty")
    try:
        value = Decimal(parse_decimal(text, locale=locale, strict=True))
    except (NumberFormatError, InvalidOperation, ValueError):
        if not re.fullmatch(r"-?\d+(\.\d+)?", text):
            raise ValueError(text) from None
        value = Decimal(text)
    try:  # the same bounds as every number from outside (tallyray.pricing.money)
        return parse_amount(value)
    except InvalidInput:
        raise ValueError(text) from None


# --------------------------------------------------------------------------- a visit


@dataclasses.dataclass(frozen=True)
class _Visit:
    """One request to a portal page: the session, its customer, and how to show things."""

    session: PortalSession
    token: str
    record: CustomerRecord
    fmt: _Format
    root: str

    @property
    def env(self) -> str:
        return self.session.env

    @property
    def customer_id(self) -> str:
        return self.session.customer_id

    @property
    def base(self) -> str:
        return f"{self.root}/portal/{self.token}"

    def audit(
        self,
        request: Request,
        action: str,
        at: int,
        summary: Mapping[str, object],
        object_type: str = "customer",
        object_id: str | None = None,
    ) -> AuditEntry:
        """The audit entry of a change the customer makes through its portal link."""
        return AuditEntry(
            env=self.env,
            actor=Actor("portal", f"portal:{self.customer_id}", self.record.name),
            action=action,
            object_type=object_type,
            object_id=self.customer_id if object_id is None else object_id,
            at=at,
            request_id=getattr(request.state, "request_id", None),
            summary=summary,
        )

    def context(self, page: str, request: Request, **values: Any) -> dict[str, Any]:
        notice = NOTICES.get(request.query_params.get("done", ""))
        return {
            "page": page,
            "lang": "en",
            "value_lang": self.fmt.lang,
            "static": f"{self.root}/portal/static",
            "base": self.base,
            "customer": {
                "id": self.record.id,
                "name": self.record.name or self.record.id,
            },
            "env": self.env,
            "currency": self.fmt.currency,
            "expires": {
                "text": self.fmt.moment(self.session.expires_at),
                "iso": self.fmt.iso(self.session.expires_at),
            },
            "nav": [
                ("overview", "Overview", self.base),
                ("usage", "Usage", f"{self.base}/usage"),
                ("invoices", "Invoices", f"{self.base}/invoices"),
                ("alerts", "Alerts", f"{self.base}/alerts"),
                ("payment", "Payment", f"{self.base}/payment"),
                ("credit", "Add credit", f"{self.base}/credit"),
            ],
            "notice": notice,
            **values,
        }


def _error_page(request: Request, status: int, heading: str, message: str) -> HTMLResponse:
    root = str(request.scope.get("root_path", ""))
    response = _page(
        "error.html",
        status,
        page="error",
        lang="en",
        static=f"{root}/portal/static",
        nav=[],
        notice=None,
        heading=heading,
        message=message,
        code=status,
    )
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def _guarded(request: Request, make: Callable[[], Awaitable[Response]]) -> Response:
    """A page, or the error page its failure deserves (never a 500 for a known failure)."""
    try:
        return await make()
    except ExpiredToken:
        return _error_page(
            request,
            401,
            "This link has expired",
            "Portal links work for a limited time. Ask your provider for a new link.",
        )
    except (InvalidToken, Unauthorized):
        return _error_page(
            request,
            401,
            "This link is not valid",
            "Check that you copied the whole link, or ask your provider for a new one.",
        )
    except NotFound:
        return _error_page(request, 404, "Not found", "There is nothing at this address.")
    except RateLimited as error:
        response = _error_page(
            request, 429, "Too many requests", "Please wait a moment, then try again."
        )
        response.headers["Retry-After"] = error.retry_after_header
        return response
    except PayloadTooLarge as error:
        return _error_page(request, 413, "Too much data", error.message)
    except (StoreUnavailable, DatabaseUnavailable) as error:
        log.warning("portal page unavailable: %s", error)
        return _error_page(request, 503, "Temporarily unavailable", "Please try again in a moment.")
    except InvalidInput as error:
        return _error_page(request, 400, "This request cannot be handled", error.message)


async def _form(request: Request) -> dict[str, str]:
    """A posted HTML form (``application/x-www-form-urlencoded``), first value of each
    field."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise PayloadTooLarge("the form is larger than this page ever sends")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the form is not UTF-8") from None
    fields = parse_qs(text, keep_blank_values=True, max_num_fields=50)
    return {name: values[0] for name, values in fields.items()}


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=_HEADERS)


# --------------------------------------------------------------------------- the routes


class _Pages:
    """The portal's routes' shared state: the services they use, the portal's signing keys
    (loaded once), and a rate limiter per link."""

    def __init__(self, services: Services, authenticate: Authenticate) -> None:
        self.services = services
        self.authenticate = authenticate
        self.catalog = services.catalog
        self.engine = self.catalog.engine
        self.router = services.router
        self.clock = services.clock
        self.rules = services.alerts or AlertRules(
            self.catalog, AlertStore(self.engine), self.router, self.clock
        )
        self.store = (
            services.billing.store if services.billing is not None else BillingStore(self.engine)
        )
        self.loaded: list[PortalKeys] = []
        self.limiter = RateLimiter(services.portal_rate_limit)
        self.audit_log = AuditLog(self.engine)

    async def portal_keys(self) -> PortalKeys:
        if not self.loaded:
            self.loaded.append(await run_in_threadpool(PortalKeys.load, self.engine, self.clock()))
        return self.loaded[0]

    async def visit(self, request: Request, token: str) -> _Visit:
        session = (await self.portal_keys()).read(token, self.clock())
        wait = self.limiter.take(token)
        if wait is not None:
            raise RateLimited("too many requests from this portal link", retry_after=wait)
        try:
            record = await run_in_threadpool(
                self.catalog.customer, session.env, session.customer_id
            )
        except NotFound:
            raise InvalidToken("the customer of this link is gone") from None
        locale = str(record.billing.get("locale") or DEFAULT_LOCALE)
        fmt = _Format(locale, record.currency)
        return _Visit(session, token, record, fmt, str(request.scope.get("root_path", "")))

    async def env_catalog(self, env: str) -> EnvCatalog:
        return await run_in_threadpool(self.catalog.env_catalog, env)

    def current_period(self, record: CustomerRecord, found: EnvCatalog, now: int) -> Period:
        plan = None
        if record.plan_key is not None:
            plan = found.plans.get((record.plan_key, record.plan_version or 0))
        return period_of(now, plan.interval if plan else "month", record.anchor)

    async def overview(
        self,
        request: Request,
        v: _Visit,
        status: int = 200,
        errors: Mapping[str, str] | None = None,
        entered: Mapping[str, str] | None = None,
    ) -> Response:
        now = self.clock()
        balance = await self.router.call(
            self.router.index(v.env, v.customer_id), "balance", v.env, v.customer_id
        )
        found = await self.env_catalog(v.env)
        period = self.current_period(v.record, found, now)
        fmt = v.fmt
        forecast = period_forecast(
            Decimal(str(balance.get("period_spend_precise", balance["period_spend"]))),
            period.start,
            period.end,
            now,
        )
        grants = sorted(
            (g for g in balance.get("grants", []) if not g.get("expired")),
            key=lambda g: (g["expires_at"] is None, g["expires_at"] or 0),
        )
        plan = None
        if v.record.plan_key is not None:
            known = found.plans.get((v.record.plan_key, v.record.plan_version or 0))
            plan = known.name if known is not None else v.record.plan_key
        cap, limit = v.record.spend_cap, v.record.credit_limit
        context = v.context(
            "overview",
            request,
            plan=plan,
            billing_mode=balance.get("billing_mode", v.record.billing_mode),
            available=None if balance.get("available") is None else fmt.money(balance["available"]),
            credits_remaining=fmt.money(balance["credits_remaining"]),
            credits_expired=fmt.money(balance["credits_expired"])
            if Decimal(str(balance.get("credits_expired", "0")))
            else None,
            holds=fmt.money(balance["holds"]) if Decimal(str(balance.get("holds", "0"))) else None,
            period_spend=fmt.money(balance["period_spend"]),
            period={
                "text": fmt.period(period.start, period.end),
                "start": fmt.iso(period.start),
                "end": fmt.iso(period.end),
                "elapsed": fmt.percent(forecast.elapsed),
            },
            forecast=None if forecast.projected is None else fmt.money(forecast.projected),
            grants=[
                {
                    "amount": fmt.money(g["amount"]),
                    "remaining": fmt.money(g["remaining"]),
                    "expires": None if g["expires_at"] is None else fmt.moment(g["expires_at"]),
                    "expires_iso": None if g["expires_at"] is None else fmt.iso(g["expires_at"]),
                }
                for g in grants
            ],
            spend_cap=None if cap is None else fmt.money(cap),
            credit_limit=None if limit is None else fmt.money(limit),
            cap_above_limit=cap is not None and limit is not None and cap > limit,
            cap_value=(entered or {}).get(
                "spend_cap",
                "" if cap is None else fmt.number(cap),
            ),
            example_amount=fmt.example_amount(),
            errors=dict(errors or {}),
            limits=[_limit_row(x, fmt) for x in balance.get("limits", [])],
            entitlements=balance.get("entitlements", []),
        )
        return _page("overview.html", status, **context)

    async def own_invoice(self, v: _Visit, invoice_id: str) -> dict[str, Any]:
        document = await run_in_threadpool(self.store.invoice, v.env, invoice_id)
        if document.get("customer_id") != v.customer_id or document.get("status") == "draft":
            raise NotFound(f"no invoice {invoice_id!r}")
        return document

    async def alerts_page(
        self,
        request: Request,
        v: _Visit,
        status: int = 200,
        errors: Mapping[str, str] | None = None,
        entered: Mapping[str, str] | None = None,
    ) -> Response:
        listed = await self.rules.list(v.env, v.customer_id)
        found = await self.env_catalog(v.env)
        context = v.context(
            "alerts",
            request,
            rules=[_rule_row(rule, v) for rule in listed],
            kinds=[(kind, KIND_LABELS.get(kind, kind)) for kind in RULE_KINDS],
            meters=sorted(found.meters.meters),
            entered={"kind": "", "threshold": "", "meter": "", "name": "", **(entered or {})},
            errors=dict(errors or {}),
            example_amount=v.fmt.example_amount(),
        )
        return _page("alerts.html", status, **context)

    async def credit(
        self,
        request: Request,
        v: _Visit,
        top_up_id: str | None = None,
        status: int = 200,
        errors: Mapping[str, str] | None = None,
        entered: Mapping[str, str] | None = None,
    ) -> Response:
        """The "Add credit" page; with ``top_up_id``, that top-up's status first."""
        purchases = self.services.billing.purchases if self.services.billing else None
        if purchases is None:  # pragma: no cover - build_app always wires billing
            raise NotFound("no billing")
        fmt = v.fmt
        shown = None
        if top_up_id is not None:
            found = await run_in_threadpool(purchases.store.get, v.env, top_up_id)
            if found["customer_id"] != v.customer_id or found["kind"] != "top_up":
                raise NotFound("not this customer's top-up")
            shown = _top_up_row(found, fmt)
        recent = await run_in_threadpool(
            purchases.store.of_customer, v.env, v.customer_id, PageRequest(5), "top_up"
        )
        provider = str(v.record.billing.get("payment_provider") or "manual")
        low, high = purchases.billing.config.top_ups.limits(fmt.currency)
        context = v.context(
            "credit",
            request,
            top_up=shown,
            returned=request.query_params.get("result") == "paid",
            can_buy=provider in _CHECKOUT_PROVIDERS,
            provider_name=_CHECKOUT_PROVIDERS.get(provider, provider),
            minimum=fmt.money(low),
            maximum=fmt.money(high),
            recent=[_top_up_row(t, fmt) for t in recent.items],
            errors=dict(errors or {}),
            entered={"amount": "", **(entered or {})},
        )
        return _page("credit.html", status, **context)


router = APIRouter()


def include(app: FastAPI, services: Services, authenticate: Authenticate) -> None:
    """Serve ``POST /v1/portal-sessions``, the ``/portal/{token}`` pages and the portal's
    stylesheet (``GET /portal/static/portal.css``) on ``app``. ``authenticate`` maps a
    request's API key to its environment and raises what it deserves otherwise."""
    from tallyray.serve.routes import portal_payment  # its pages build on this module's

    app.state.portal = _Pages(services, authenticate)
    app.include_router(router)
    app.include_router(portal_payment.router)


def _pages(request: Request) -> _Pages:
    pages: _Pages = request.app.state.portal
    return pages


# -- sessions (API) ------------------------------------------------------------------


@router.post("/v1/portal-sessions", tags=["portal"], status_code=201)
async def post_portal_session(request: Request) -> Response:
    """`{"customer_id", "ttl_seconds"?}` → `201 {"url": "/portal/<token>", "expires_at",
    "customer_id"}`: a link that shows this one customer's portal until it expires
    (default 1 hour, at most 24 hours)."""
    p = _pages(request)
    try:
        env = await p.authenticate(request)
        customer_id, ttl = _session_request(await request.body())
        await run_in_threadpool(p.catalog.customer, env, customer_id)  # 404 when unknown
        keys = await p.portal_keys()
    except TallyrayError as error:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else {}
        if isinstance(error, StoreUnavailable):
            headers["Retry-After"] = "1"
        return JSONResponse(error.to_json(), status_code=error.http_status, headers=headers)
    now = p.clock()
    expires_at = now + ttl * _US
    token = keys.issue(env, customer_id, expires_at)
    entry = audit_entry(
        request,
        env,
        "portal_session.created",
        "customer",
        customer_id,
        now,
        {"expires_at": format_timestamp(expires_at)},
    )
    await run_in_threadpool(p.audit_log.write, entry)
    root = str(request.scope.get("root_path", ""))
    return Response(
        orjson.dumps(
            {
                "url": f"{root}/portal/{token}",
                "expires_at": format_timestamp(expires_at),
                "customer_id": customer_id,
            }
        ),
        status_code=201,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


# -- the stylesheet ------------------------------------------------------------------


@router.get("/portal/static/portal.css", include_in_schema=False)
async def portal_css() -> Response:
    return Response(
        _stylesheet(),
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# -- overview and spend cap ----------------------------------------------------------


@router.get("/portal/{token}", include_in_schema=False)
async def get_overview(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        return await p.overview(request, await p.visit(request, token))

    return await _guarded(request, make)


@router.post("/portal/{token}/spend-cap", include_in_schema=False)
async def post_spend_cap(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        form = await _form(request)
        if form.get("action") == "remove":
            cap = None
        else:
            try:
                cap = _spend_cap(form.get("spend_cap", ""), v.fmt)
            except InvalidInput as error:
                errors = {p.where: p.message for p in error.problems}
                return await p.overview(request, v, 422, errors, form)
        now = p.clock()
        entry = v.audit(
            request,
            "customer.spend_cap_set" if cap is not None else "customer.spend_cap_removed",
            now,
            {"spend_cap": None if cap is None else format(cap, "f")},
        )
        # The customer's own cap only: the operator's credit limit is not the portal's.
        await run_in_threadpool(p.catalog.set_spend_cap, v.env, v.customer_id, cap, entry)
        index = p.router.index(v.env, v.customer_id)
        await p.router.call(index, "refresh", v.env, [v.customer_id])
        return _see(f"{v.base}?done={'cap-removed' if cap is None else 'cap-set'}")

    return await _guarded(request, make)


# -- usage ---------------------------------------------------------------------------


@router.get("/portal/{token}/usage", include_in_schema=False)
async def get_usage(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        now = p.clock()
        found = await p.env_catalog(v.env)
        period = p.current_period(v.record, found, now)
        today_end = now - now % _DAY_US + _DAY_US
        end = min(period.end, max(today_end, period.start + _DAY_US))
        fmt = v.fmt
        charts = []
        for key, spec in sorted(found.meters.meters.items()):
            series = await run_in_threadpool(
                usage_series,
                p.engine,
                v.env,
                v.customer_id,
                spec,
                period.start,
                end,
                "day",
                spec.group_by,
            )
            data = chart_data(series)
            if not data.total:
                continue
            by = f" by {', '.join(spec.group_by)}" if spec.group_by else ""
            charts.append(
                {
                    "meter": key,
                    "total": fmt.quantity(data.total),
                    "figure": bar_chart(
                        data,
                        chart_id=f"chart-{_SAFE_NAME.sub('-', key)}",
                        title=f"{key} per day{by}",
                        description=f"Daily {key} in the current period{by}.",
                        day_label=fmt.day,
                        tick_label=fmt.short_day,
                        number=fmt.number,
                    ),
                }
            )
        context = v.context(
            "usage",
            request,
            period={"text": fmt.period(period.start, period.end)},
            charts=charts,
        )
        return _page("usage.html", **context)

    return await _guarded(request, make)


# -- invoices ------------------------------------------------------------------------


@router.get("/portal/{token}/invoices", include_in_schema=False)
async def get_invoices(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        found = (await run_in_threadpool(p.store.invoices, v.env, v.customer_id, None, None)).items
        rows = [_invoice_row(doc, v) for doc in found if doc.get("status") != "draft"]
        return _page("invoices.html", **v.context("invoices", request, invoices=rows))

    return await _guarded(request, make)


@router.get("/portal/{token}/invoices/{invoice_id}.html", include_in_schema=False)
async def get_invoice_html(token: str, invoice_id: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        document = await p.own_invoice(await p.visit(request, token), invoice_id)
        html = await run_in_threadpool(render_html, document)
        return HTMLResponse(html, headers={**_HEADERS, "Content-Security-Policy": DOCUMENT_CSP})

    return await _guarded(request, make)


@router.get("/portal/{token}/invoices/{invoice_id}.pdf", include_in_schema=False)
async def get_invoice_pdf(token: str, invoice_id: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        document = await p.own_invoice(await p.visit(request, token), invoice_id)
        pdf = await run_in_threadpool(render_pdf, document)
        name = _SAFE_NAME.sub("-", str(document.get("number") or document["id"]))
        return Response(
            pdf,
            media_type="application/pdf",
            headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{name}.pdf"'},
        )

    return await _guarded(request, make)


# -- alerts --------------------------------------------------------------------------


@router.get("/portal/{token}/alerts", include_in_schema=False)
async def get_alerts(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        return await p.alerts_page(request, await p.visit(request, token))

    return await _guarded(request, make)


@router.post("/portal/{token}/alerts", include_in_schema=False)
async def post_alert(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        form = await _form(request)
        try:
            doc = _rule_doc(form, v.fmt)
            summary = {"customer_id": v.customer_id, "rule": doc}
            entry = v.audit(request, "alert_rule.created", p.clock(), summary, "alert_rule", "")
            await p.rules.add(v.env, v.customer_id, doc, entry)
        except NotFound:
            raise
        except InvalidInput as error:
            errors = {p.where: p.message for p in error.problems}
            if not errors:
                errors["form"] = error.message
            return await p.alerts_page(request, v, 422, errors, form)
        return _see(f"{v.base}/alerts?done=alert-added")

    return await _guarded(request, make)


@router.post("/portal/{token}/alerts/{rule_id}/delete", include_in_schema=False)
async def post_alert_delete(token: str, rule_id: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        try:
            summary = {"customer_id": v.customer_id}
            entry = v.audit(
                request, "alert_rule.deleted", p.clock(), summary, "alert_rule", rule_id
            )
            await p.rules.delete(v.env, v.customer_id, rule_id, entry)
        except NotFound:  # twice, or not this customer's: nothing to remove
            return _see(f"{v.base}/alerts?done=alert-gone")
        return _see(f"{v.base}/alerts?done=alert-deleted")

    return await _guarded(request, make)


# -- add credit ----------------------------------------------------------------------


@router.get("/portal/{token}/credit", include_in_schema=False)
async def get_credit(token: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        return await p.credit(request, await p.visit(request, token))

    return await _guarded(request, make)


@router.get("/portal/{token}/credit/returned", include_in_schema=False)
async def get_credit_returned(token: str, request: Request) -> Response:
    """Where the provider sends the customer back: ``?top_up=<id>&result=…``."""
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        top_up_id = request.query_params.get("top_up", "")
        return await p.credit(request, v, top_up_id or None)

    return await _guarded(request, make)


@router.get("/portal/{token}/credit/{top_up_id}", include_in_schema=False)
async def get_top_up(token: str, top_up_id: str, request: Request) -> Response:
    p = _pages(request)

    async def make() -> Response:
        return await p.credit(request, await p.visit(request, token), top_up_id)

    return await _guarded(request, make)


@router.post("/portal/{token}/credit", include_in_schema=False)
async def post_credit(token: str, request: Request) -> Response:
    """Start a top-up, then show its page with the link to the provider's hosted page (a
    link, not a redirect: the page's CSP lets forms post only to the portal itself)."""
    p = _pages(request)

    async def make() -> Response:
        v = await p.visit(request, token)
        form = await _form(request)
        billing = p.services.billing
        assert billing is not None
        try:
            amount = _top_up_amount(form.get("amount", ""), v.fmt)
            billing.purchases.checked_amount(v.record, amount, None)
        except InvalidInput as error:
            errors = {pr.where: _portal_message(pr.message, error.message) for pr in error.problems}
            return await p.credit(request, v, None, 422, errors or {"amount": error.message}, form)
        now = p.clock()
        entry = v.audit(request, "credit_purchase.created", now, {"amount": f"{amount:f}"})
        back = f"{str(request.base_url).rstrip('/')}{v.base}/credit"
        # The top-up's own page is where the provider sends the customer back; its id is
        # only known once made, so the page reads it from the query the provider keeps.
        purchase = await billing.purchases.start_top_up(
            v.env, v.customer_id, amount, None, f"{back}/returned", entry
        )
        return _see(f"{v.base}/credit/{purchase['id']}")

    return await _guarded(request, make)


# --------------------------------------------------------------------------- helpers


_CHECKOUT_PROVIDERS = {"stripe": "Stripe", "adyen": "Adyen"}
_TOP_UP_STATUS = {
    "pending": "Waiting for payment",
    "paid": "Paid",
    "failed": "Payment failed",
    "canceled": "Canceled",
}


def _top_up_amount(text: str, fmt: _Format) -> Decimal:
    if not text.strip():
        raise InvalidInput("enter an amount", [Problem("amount", "Enter an amount.")])
    try:
        return _number(text, fmt.babel)
    except ValueError:
        raise InvalidInput(
            "not an amount",
            [Problem("amount", f"Enter an amount such as {fmt.example_amount()}.")],
        ) from None


def _portal_message(problem: str, whole: str) -> str:
    """A field message for a person: the API's sentence when it says more than the field's
    short note (``from 5.00 to 500.00 EUR`` → the whole sentence)."""
    text = whole if len(whole) > len(problem) else problem
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _top_up_row(purchase: Mapping[str, Any], fmt: _Format) -> dict[str, Any]:
    receipt = purchase.get("document") or {}
    failure = purchase.get("failure") or {}
    checkout = purchase.get("checkout") or {}
    return {
        "id": purchase["id"],
        "amount": fmt.money(purchase["amount"]),
        "status": purchase["status"],
        "status_text": _TOP_UP_STATUS.get(purchase["status"], purchase["status"]),
        "created": fmt.moment(int(purchase["created_at"])),
        "receipt": receipt.get("number"),
        "failure": failure.get("message"),
        "checkout_url": checkout.get("url")
        if purchase["status"] in ("pending", "failed")
        else None,
        "provider_name": _CHECKOUT_PROVIDERS.get(purchase["provider"], purchase["provider"]),
    }


def _session_request(raw: bytes) -> tuple[str, int]:
    if not raw:
        raise InvalidInput("the request needs a JSON body")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the body is not valid JSON: {error}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object")
    problems = [
        Problem(name, "unknown field") for name in sorted(set(doc) - {"customer_id", "ttl_seconds"})
    ]
    customer_id = doc.get("customer_id")
    if not isinstance(customer_id, str) or not customer_id:
        problems.append(Problem("customer_id", "must be a non-empty string"))
    ttl = doc.get("ttl_seconds", DEFAULT_TTL_SECONDS)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS:
        problems.append(
            Problem("ttl_seconds", f"must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}")
        )
    if problems:
        raise InvalidInput("the request body has problems", problems)
    return str(customer_id), int(ttl)


def _spend_cap(text: str, fmt: _Format) -> Decimal:
    if not text.strip():
        raise InvalidInput(
            "enter an amount", [Problem("spend_cap", "Enter an amount, or remove the cap.")]
        )
    try:
        value = _number(text, fmt.babel)
    except ValueError:
        raise InvalidInput(
            "not an amount",
            [Problem("spend_cap", f"Enter an amount such as {fmt.example_amount()}.")],
        ) from None
    if value < 0:
        raise InvalidInput("negative", [Problem("spend_cap", "The cap cannot be negative.")])
    places = currency(fmt.currency).minor_units
    if value != value.quantize(Decimal(1).scaleb(-places)):
        raise InvalidInput(
            "too precise",
            [Problem("spend_cap", f"Use at most {places} decimal places for {fmt.currency}.")],
        )
    return value


def _rule_doc(form: Mapping[str, str], fmt: _Format) -> dict[str, Any]:
    """The alert-rule JSON the rule parser takes, from the portal's form. The threshold may be
    typed in the customer's locale; it reaches the parser as a plain decimal string."""
    doc: dict[str, Any] = {"kind": form.get("kind", "")}
    raw = form.get("threshold", "").strip()
    if not raw:
        raise InvalidInput("no threshold", [Problem("threshold", "Enter a threshold.")])
    try:
        doc["threshold"] = format(_number(raw, fmt.babel), "f")
    except ValueError:
        raise InvalidInput(
            "not a number",
            [Problem("threshold", f"Enter a number such as {fmt.example_amount()}.")],
        ) from None
    meter = form.get("meter", "").strip()
    if meter:
        doc["meter"] = meter
    name = form.get("name", "").strip()
    if name:
        doc["name"] = name
    return doc


def _rule_row(rule: Mapping[str, Any], v: _Visit) -> dict[str, Any]:
    kind = rule["kind"]
    threshold = Decimal(str(rule["threshold"]))
    fmt = v.fmt
    if not is_kind(kind):  # every rule shown went through the one parser; say what it says
        what = str(rule.get("description", kind))
    else:
        match kind:
            case "balance_below":
                what = f"Available balance below {fmt.money(threshold)}"
            case "spend_above":
                what = f"Period spend above {fmt.money(threshold)}"
            case "usage_above":
                what = f"{rule.get('meter')} usage above {fmt.quantity(threshold)}"
            case "credits_used_percent":
                what = f"Credits used at {fmt.percent(threshold / 100, exact=True)}"
            case _:
                assert_never(kind)
    return {
        "id": rule["id"],
        "name": rule.get("name"),
        "condition": what,
        "own": rule.get("source", "customer") == "customer",
    }


_WINDOW_TEXT = {
    "day": "per day",
    "week": "per week",
    "month": "per month",
    "period": "per billing period",
}


def _limit_row(limit: Mapping[str, Any], fmt: _Format) -> dict[str, Any]:
    """One unit limit of the plan, as the "Plan limits" table shows it."""
    groups = limit.get("groups") or {}
    narrowed = ", ".join(f"{name}: {' or '.join(map(str, v))}" for name, v in groups.items())
    resets = parse_timestamp(limit["resets_at"])
    return {
        "meter": limit["meter"],
        "groups": narrowed or None,
        "window": _WINDOW_TEXT.get(limit["window"], limit["window"]),
        "used": fmt.quantity(limit["used"]),
        "limit": fmt.quantity(limit["limit"]),
        "held": fmt.quantity(limit["held"]) if Decimal(limit.get("held", "0")) else None,
        "remaining": fmt.quantity(limit["remaining"]),
        "resets": fmt.moment(resets),
        "resets_iso": limit["resets_at"],
        "reached": not Decimal(limit["remaining"]),
    }


def _invoice_row(doc: Mapping[str, Any], v: _Visit) -> dict[str, Any]:
    period = doc.get("period") or {}
    cur = str(doc.get("currency") or v.fmt.currency)
    fmt = _Format(v.fmt.locale, cur)
    text = ""
    if isinstance(period, Mapping) and period.get("start") and period.get("end"):
        text = _period_text(str(period["start"]), str(period["end"]), fmt)
    return {
        "id": doc["id"],
        "number": doc.get("number") or doc["id"],
        "period": text,
        "issued": _day_text(doc.get("issued_at"), fmt),
        "status": str(doc.get("status", "")).replace("_", " ").capitalize(),
        "total": fmt.money(doc.get("total", "0")),
        "amount_due": fmt.money(doc.get("amount_due", "0")),
        "html": f"{v.base}/invoices/{doc['id']}.html",
        "pdf": f"{v.base}/invoices/{doc['id']}.pdf",
    }


def _parse_iso(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _period_text(start: str, end: str, fmt: _Format) -> str:
    first, after = _parse_iso(start), _parse_iso(end)
    if first is None or after is None:
        return ""
    last = after - timedelta(microseconds=1)
    return f"{fmt.day(first.date())} – {fmt.day(last.date())}"


def _day_text(value: object, fmt: _Format) -> str:
    moment = _parse_iso(value) if isinstance(value, str) else None
    return "" if moment is None else fmt.day(moment.date())
