"""The API's contract as pydantic v2 models: every request and response body, with examples
and the one error shape.

The models describe; the routes parse. Requests are decoded by hand (orjson and the checks of
:mod:`tallyray.serve.http` and :mod:`tallyray.serve.intake`), which is what the hot routes
need: no model is built per event or per check. :mod:`tallyray.serve.openapi` puts these
models in ``/openapi.json`` and ties each to its route in :data:`OPERATIONS`.

Documents that carry more than a client needs to rely on (an invoice, a plan, a balance)
list their stable fields and allow more (``additionalProperties``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Decimal = str
"""Money and quantities travel as decimal strings (``"12.50"``), never as JSON floats."""
Moment = str
"""An RFC 3339 timestamp (``"2026-11-20T10:00:00Z"``)."""


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors ------------------------------------------------------------------------------


class ErrorDetail(Closed):
    where: str = Field(examples=["[1].properties.input_tokens"])
    message: str = Field(examples=["must be a number, got 'many'"])


class ErrorBody(Closed):
    type: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["'amount' must be a decimal number"])
    details: list[ErrorDetail]


class ErrorResponse(Closed):
    """Every error of the API: a type a program can switch on, a message that says what to
    fix, and where each problem is."""

    error: ErrorBody


# -- events and usage -------------------------------------------------------------------


class Event(Open):
    id: str | None = Field(None, max_length=255, examples=["evt_01"])
    customer_id: str = Field(max_length=255, examples=["acme"])
    type: str = Field(max_length=255, examples=["llm.completion"])
    timestamp: Moment | None = Field(None, examples=["2026-11-20T10:00:00Z"])
    properties: dict[str, Any] = Field(
        default_factory=dict,
        examples=[{"model": "gpt-4o", "input_tokens": 1200, "output_tokens": 350}],
    )


class EventBatch(Closed):
    events: list[Event] = Field(max_length=10_000)


class IngestResult(Open):
    ingested: int = Field(examples=[98])
    duplicates: int = Field(examples=[2])


class UsageSeries(Open):
    customer_id: str
    meter: str
    window: Literal["hour", "day"]
    data: list[dict[str, Any]]


# -- quota checks and reservations -------------------------------------------------------


class WouldBe(Open):
    """An event that has not happened yet: what a call would use."""

    type: str = Field(examples=["llm.completion"])
    properties: dict[str, Any] = Field(
        default_factory=dict, examples=[{"model": "gpt-4o", "input_tokens": 1200}]
    )


class QuotaCheck(Closed):
    customer_id: str = Field(examples=["acme"])
    event: WouldBe | None = None
    events: list[WouldBe] | None = None


class UnitLimitUse(Open):
    """Where one of the plan's unit limits stands in its current window (UTC)."""

    meter: str = Field(examples=["output_tokens"])
    window: Literal["day", "week", "month", "period"]
    limit: Decimal = Field(examples=["1000000"])
    groups: dict[str, list[Any]] | None = Field(None, examples=[{"model": ["gpt-4o"]}])
    used: Decimal = Field(
        examples=["999500"], description="Units used in the window (in a refusal: plus held)"
    )
    window_start: Moment = Field(examples=["2026-11-20T00:00:00Z"])
    resets_at: Moment = Field(examples=["2026-11-21T00:00:00Z"])


class QuotaAnswer(Open):
    allowed: bool
    cost: Decimal = Field(examples=["0.0315"])
    available: Decimal | None = Field(examples=["87.65"])
    currency: str = Field(examples=["EUR"])
    reason: str | None = Field(examples=[None])
    refusal: (
        Literal["credit", "credit_limit", "spend_cap", "unit_limit", "entitlement", "unpriced"]
        | None
    ) = Field(
        None,
        description="What refused it; null when allowed. `unpriced`: the plan refuses usage "
        'none of its charges prices (`"unpriced": "reject"`), and `reason` names the meter',
        examples=[None],
    )
    limit: UnitLimitUse | None = Field(None, description="The unit limit that refused it")
    feature: str | None = Field(
        None, description="The feature the plan does not include", examples=["models.gpt-4o"]
    )


class ReservationRequest(QuotaCheck):
    ttl_seconds: float | None = Field(None, gt=0, le=86_400, examples=[300])


class Reservation(QuotaAnswer):
    id: str | None = Field(examples=["res_0_5f2c9a0e4b1d7c3a9e8f"])
    customer_id: str
    amount: Decimal = Field(examples=["0.04"])
    expires_at: Moment | None


class SettleRequest(Closed):
    events: list[Event] = Field(max_length=10_000)


class Settlement(Open):
    id: str
    status: Literal["settled"]
    retried: bool = False


class Release(Open):
    id: str
    status: Literal["released", "expired"]
    released: Decimal | bool | None = None
    retried: bool


# -- catalog -----------------------------------------------------------------------------


class Meter(Open):
    key: str = Field(examples=["input_tokens"])
    event_type: str = Field(examples=["llm.completion"])
    aggregation: Literal["sum", "count", "max", "unique_count", "latest", "weighted_sum"]


class MeterList(Closed):
    meters: list[Meter]
    has_more: bool


class Plan(Open):
    key: str = Field(examples=["pro"])
    currency: str = Field(examples=["EUR"])
    version: int | None = Field(None, examples=[2])
    unpriced: Literal["reject", "allow", "flag"] = Field(
        "flag",
        description="What an event whose usage no charge prices gets: refused (`reject`), "
        "accepted as free (`allow`), or accepted, counted and announced (`flag`)",
    )
    status: Literal["draft", "published"] | None = Field(
        None, description="`draft`: stored and simulated, not subscribable until published"
    )
    draft_version: int | None = Field(None, description="the key's draft, if it has one")


class PlanRequest(Open):
    key: str = Field(examples=["pro"])
    currency: str = Field(examples=["EUR"])
    unpriced: Literal["reject", "allow", "flag"] = Field(
        "flag",
        description="What an event whose usage no charge prices gets: refused (`reject`), "
        "accepted as free (`allow`), or accepted, counted and announced (`flag`)",
    )
    draft: bool | None = Field(
        None,
        description="store a draft version (one per key; posting a draft again replaces "
        "it): simulated, not subscribable until `POST /v1/plans/{key}/versions/{version}"
        "/publish`",
        examples=[True],
    )


class UnpricedPeriod(Closed):
    start: Moment
    end: Moment


class UnpricedUsage(Closed):
    """Usage no charge of the customer's plan prices, in one group of one meter, in one
    period: how many events, and the group's quantity in the period."""

    id: str = Field(examples=["unp_6f1c0a9e2b7d4c3a8e5f1b2d9c0a7e6f"])
    customer_id: str = Field(examples=["acme"])
    plan: str = Field(examples=["pro"])
    plan_version: int | None = Field(examples=[1])
    meter: str = Field(examples=["output_tokens"])
    groups: dict[str, Any] = Field(examples=[{"model": "gpt-5"}])
    period: UnpricedPeriod
    events: int = Field(examples=[12])
    quantity: Decimal = Field(examples=["48000"])
    updated_at: Moment


class UnpricedUsageList(Closed):
    unpriced_usage: list[UnpricedUsage]
    has_more: bool


class PlanList(Closed):
    plans: list[Plan]
    has_more: bool


class PlanMigrationRequest(Closed):
    from_version: int | None = Field(
        None, description="only this version's subscribers (default: every older version)"
    )
    to_version: int = Field(examples=[3])
    at: Literal["period_end", "now"] = Field(
        description="`now`: switch at once (the period is priced in two segments); "
        "`period_end`: at the end of each subscription's current period",
        examples=["period_end"],
    )


class MigratedSubscription(Closed):
    customer_id: str = Field(examples=["acme"])
    from_subscription: str
    to_subscription: str
    from_version: int = Field(examples=[2])
    to_version: int = Field(examples=[3])
    at: Moment = Field(examples=["2026-12-01T00:00:00Z"])


class SkippedSubscription(Closed):
    customer_id: str
    subscription_id: str
    reason: str = Field(examples=["cancelled: ends 2026-12-01T00:00:00Z"])


class PlanMigration(Closed):
    plan: str = Field(examples=["pro"])
    from_version: int | None
    to_version: int = Field(examples=[3])
    at: Literal["period_end", "now"]
    moved: int = Field(examples=[120], description="subscriptions moved (or scheduled) now")
    already: int = Field(
        examples=[0], description="on `to_version` already, or scheduled to move to it"
    )
    skipped: list[SkippedSubscription]
    subscriptions: list[MigratedSubscription]


class CustomerRequest(Open):
    id: str = Field(examples=["acme"])
    currency: str | None = Field(None, examples=["EUR"])
    name: str | None = None
    email: str | None = None
    country: str | None = Field(None, examples=["DE"])
    vat_id: str | None = None
    billing_mode: Literal["prepaid", "postpaid"] | None = None
    credit_limit: Decimal | None = None
    spend_cap: Decimal | None = None


class CustomerSubscription(Open):
    id: str
    plan: str
    plan_version: int
    start: Moment | None
    end: Moment | None = Field(description="set once cancelled: when it ends or ended")


class Customer(Open):
    id: str = Field(examples=["acme"])
    currency: str = Field(examples=["EUR"])
    billing_mode: str
    subscription: CustomerSubscription | None


class CustomerList(Closed):
    customers: list[Customer]
    has_more: bool


class SubscriptionRequest(Closed):
    customer_id: str = Field(examples=["acme"])
    plan: str = Field(examples=["pro"])
    start: Moment | None = None
    anchor: Literal["calendar", "anniversary"] | None = None
    discount: dict[str, Any] | None = Field(None, examples=[{"percent": "10"}])


class Subscription(Open):
    id: str
    customer_id: str
    plan: str
    plan_version: int
    start: Moment


class SubscriptionRecord(Subscription):
    end: Moment | None
    status: Literal["scheduled", "active", "ending", "ended"] = Field(
        description="`scheduled`: starts in the future (a plan migration at period end); "
        "`ending`: cancelled, running until `end`"
    )
    created_at: Moment


class CancelRequest(Closed):
    at: Literal["period_end", "now"] = Field(
        "period_end",
        description="`period_end`: at the end of the current period; `now`: at once, the "
        "period's base fee prorated to the days it covered",
    )


class SubscriptionList(Closed):
    subscriptions: list[SubscriptionRecord]
    has_more: bool


class CreditGrantRequest(Closed):
    amount: Decimal = Field(examples=["100.00"])
    currency: str | None = None
    expires_at: Moment | None = None
    priority: int | None = None


class CreditGrant(Open):
    id: str
    amount: Decimal


class TopUpRequest(Closed):
    amount: Decimal = Field(examples=["50.00"])
    currency: str | None = Field(None, description="The customer's currency (the default)")
    return_url: str | None = Field(
        None,
        description="Where the provider sends the customer back (`?top_up=<id>&result=…` is "
        "added); coming back books nothing",
    )


class TopUp(Open):
    id: str = Field(examples=["pur_3f9a0c..."])
    object: Literal["top_up", "recharge"]
    customer_id: str
    status: Literal["pending", "paid", "failed", "canceled"]
    amount: Decimal
    currency: str
    provider: str = Field(examples=["stripe"])
    provider_reference: str | None = Field(
        None, description="The Checkout Session or Adyen session id"
    )
    checkout_url: str | None = Field(None, description="The provider's hosted payment page")
    session_data: str | None = Field(None, description="Adyen's sessionData, for a Drop-in")
    grant_id: str | None = Field(None, description="The credit grant, once paid")
    receipt: dict[str, Any] | None = Field(None, description="The receipt, once paid")
    created_at: Moment
    paid_at: Moment | None = None


class TopUpList(Closed):
    top_ups: list[TopUp]
    has_more: bool


class LimitStanding(UnitLimitUse):
    held: Decimal = Field(examples=["2000"])
    remaining: Decimal = Field(examples=["998000"])


class EntitlementShown(Closed):
    feature: str = Field(examples=["models.gpt-4o"])
    allowed: bool


class Balance(Open):
    customer_id: str
    currency: str
    holds: Decimal
    credits_remaining: Decimal
    limits: list[LimitStanding] = Field(
        default_factory=list, description="The plan's unit limits in their current windows"
    )
    entitlements: list[EntitlementShown] = Field(default_factory=list)


# -- invoicing ---------------------------------------------------------------------------


class InvoiceRunRequest(Closed):
    until: Moment | None = None
    force: bool | None = None
    finalize: bool | None = None


class InvoiceRun(Open):
    id: str
    status: str
    until: Moment
    created_at: Moment
    scheduled_for: Moment | None = None
    """The schedule slot that started the run; ``null`` for a run started by hand."""


class InvoiceRunList(Closed):
    runs: list[InvoiceRun]
    has_more: bool


class Invoice(Open):
    id: str
    number: str | None
    status: str
    customer_id: str


class InvoiceList(Closed):
    invoices: list[Invoice]
    has_more: bool


class CreditNoteRequest(Closed):
    reason: str = Field(examples=["billed twice for the same day"])
    amount: Decimal | None = None


class CreditNote(Open):
    id: str


class ExchangeRateRequest(Closed):
    from_: str = Field(alias="from", examples=["USD"])
    to: str = Field(examples=["EUR"])
    rate: Decimal = Field(examples=["0.92"])
    as_of: Moment | None = None
    source: str | None = None


class ExchangeRate(Open):
    id: str | None = None
    rate: Decimal


class ExchangeRateList(Closed):
    rates: list[ExchangeRate]
    has_more: bool


# -- webhooks and alerts -----------------------------------------------------------------


class EndpointRequest(Closed):
    url: str = Field(examples=["https://billing.example.com/tallyray"])
    event_types: list[str] = Field(examples=[["credits.low", "invoice.finalized"]])
    description: str | None = None


class Endpoint(Open):
    id: str
    url: str
    event_types: list[str]
    status: str
    created_at: Moment


class EndpointWithSecret(Endpoint):
    secret: str = Field(examples=["whsec_…"])


class EndpointList(Closed):
    endpoints: list[Endpoint]
    has_more: bool


class DisableRequest(Closed):
    reason: str | None = None


class Delivery(Open):
    id: str
    status: str
    attempts: int


class DeliveryList(Closed):
    deliveries: list[Delivery]
    has_more: bool


class Deleted(Open):
    deleted: str


class AlertRuleRequest(Open):
    kind: str = Field(examples=["credits_remaining_below"])


class AlertRule(Open):
    id: str


class AlertRuleList(Open):
    rules: list[AlertRule]


# -- saved payment methods and auto-recharge ----------------------------------------------


class PaymentMethodSetupRequest(Closed):
    success_url: str = Field(examples=["https://example.com/billing?saved=1"])
    cancel_url: str = Field(examples=["https://example.com/billing"])
    replaces: str | None = Field(None, description="The saved method the new card replaces.")


class PaymentMethodSetup(Open):
    id: str
    provider: str
    url: str | None


class PaymentMethod(Open):
    id: str
    provider: str
    reference: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    default: bool


class PaymentMethodList(Closed):
    payment_methods: list[PaymentMethod]


class AutoRechargeRequest(Closed):
    enabled: bool = True
    threshold: str = Field(examples=["10.00"])
    amount: str = Field(examples=["50.00"])
    monthly_cap: str = Field(examples=["200.00"])


class AutoRecharge(Open):
    customer_id: str
    enabled: bool
    threshold: str | None
    amount: str | None
    monthly_cap: str | None
    currency: str | None
    disabled_reason: str | None


# -- the portal, keys, audit, operations ---------------------------------------------------


class PortalSessionRequest(Closed):
    customer_id: str
    ttl_seconds: int | None = Field(None, ge=1, le=86_400)


class PortalSession(Open):
    url: str = Field(examples=["/portal/ptk_…"])
    expires_at: Moment
    customer_id: str


class KeyRequest(Closed):
    env: Literal["live", "test", "admin"]
    name: str | None = None
    scopes: list[Literal["ingest", "read", "manage"]] | None = None
    expires_at: Moment | None = None


class ApiKey(Open):
    id: str
    env: str
    name: str | None
    scopes: list[str]
    created_at: Moment | None
    revoked_at: Moment | None


class NewApiKey(ApiKey):
    key: str = Field(examples=["trk_live_…"])


class ApiKeyList(Closed):
    keys: list[ApiKey]
    has_more: bool


class AuditEvent(Open):
    id: str
    action: str = Field(examples=["customer.updated"])
    created_at: Moment


class AuditEventList(Closed):
    events: list[AuditEvent]
    has_more: bool


class Health(Open):
    status: Literal["ok"]
    version: str
    shards: int


class ReshardRequest(Closed):
    shards: int = Field(ge=1, le=1024, description="the new shard count")


class ReshardResult(Open):
    """What a reshard moved, and how long writes paused (``unchanged``: the count was
    already that)."""

    from_: int = Field(alias="from")
    to: int
    unchanged: bool | None = None
    accounts: int | None = None
    accounts_moved: int | None = None
    holds_moved: int | None = None
    grants_moved: int | None = None
    position: int | None = Field(None, description="the log position the new shards start at")
    pause_seconds: float | None = None


class Outcome(Open):
    """An answer whose fields depend on what was done (a run, a payment, a provider's
    notice)."""


# -- the pricing sandbox -----------------------------------------------------------------


class SimulationRequest(Closed):
    """Replay the periods that end in (`from`, `to`] under a plan; either `customers` or
    `subscribers_of`."""

    plan: dict[str, Any] | str = Field(
        examples=[
            "pro@2",
            {
                "key": "pro",
                "name": "Pro (draft)",
                "currency": "EUR",
                "interval": "month",
                "base_fee": "49.00",
                "minimum": "150.00",
                "charges": [
                    {"meter": "input_tokens", "model": "per_unit", "unit_amount": "0.000002"}
                ],
            },
        ]
    )
    from_: Moment = Field(alias="from", examples=["2026-10-01T00:00:00Z"])
    to: Moment = Field(examples=["2026-11-01T00:00:00Z"])
    customers: list[str] | None = Field(None, max_length=100_000, examples=[["acme", "globex"]])
    subscribers_of: str | None = Field(None, examples=["pro"])


class SimulationProgress(Closed):
    customers: int = Field(examples=[10000])
    done: int = Field(examples=[2500])


class AmountPair(Closed):
    actual: Decimal = Field(examples=["120.00"])
    simulated: Decimal = Field(examples=["104.50"])
    difference: Decimal = Field(examples=["-15.50"])


class Simulation(Open):
    """A simulation job. `interrupted`: the process driving it stopped reporting (see
    `heartbeat_at`); `POST /v1/simulations/{id}/resume` finishes it."""

    id: str = Field(examples=["sim_01"])
    state: Literal["pending", "running", "interrupted", "succeeded", "failed"] = Field(
        examples=["running", "interrupted"]
    )
    plan: str | None = Field(examples=["pro@2"])
    from_: Moment = Field(alias="from")
    to: Moment
    progress: SimulationProgress
    errors: list[dict[str, Any]] = Field(
        examples=[[{"customer_id": "initech", "message": "no such customer"}]]
    )
    summary: dict[str, Any] | None = Field(
        examples=[
            {
                "currencies": {
                    "EUR": {
                        "customers": 2,
                        "revenue": {
                            "actual": "240.00",
                            "simulated": "209.00",
                            "difference": "-31.00",
                        },
                        "pay_more": 0,
                        "pay_less": 2,
                        "pay_same": 0,
                        "percentiles": {
                            "p5": "-15.50",
                            "p25": "-15.50",
                            "p50": "-15.50",
                            "p75": "-15.50",
                            "p95": "-15.50",
                        },
                        "biggest_increases": [],
                        "biggest_decreases": [],
                    }
                }
            }
        ]
    )
    created_at: Moment
    finished_at: Moment | None
    heartbeat_at: Moment | None = Field(
        None,
        description="when the process driving the job last reported",
        examples=["2026-11-20T10:00:10Z"],
    )


class SimulationLine(Open):
    kind: str = Field(examples=["usage"])
    description: str = Field(examples=["gpt-4o input tokens"])
    actual: Decimal
    simulated: Decimal
    difference: Decimal


class SimulationResult(Open):
    customer_id: str = Field(examples=["acme"])
    currency: str = Field(examples=["EUR"])
    periods: list[dict[str, Any]]
    lines: list[SimulationLine]
    base_fee: AmountPair
    minimum: AmountPair
    total: AmountPair


class SimulationResults(Closed):
    results: list[SimulationResult]


# -- operations: which model goes where ------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One route's bodies: the request model (``None``: no body) and the model of each
    success status."""

    request: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel]] = field(default_factory=dict)
    request_required: bool = True
    request_content: str = "application/json"


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/v1/events"): Operation(EventBatch, {200: IngestResult}),
    ("get", "/v1/usage"): Operation(None, {200: UsageSeries}),
    ("get", "/v1/unpriced-usage"): Operation(None, {200: UnpricedUsageList}),
    ("post", "/v1/quota/check"): Operation(QuotaCheck, {200: QuotaAnswer}),
    ("post", "/v1/reservations"): Operation(
        ReservationRequest, {201: Reservation, 200: Reservation}
    ),
    ("post", "/v1/reservations/{hold_id}/settle"): Operation(SettleRequest, {200: Settlement}),
    ("post", "/v1/reservations/{hold_id}/release"): Operation(None, {200: Release}),
    ("post", "/v1/meters"): Operation(Meter, {201: Meter}),
    ("get", "/v1/meters"): Operation(None, {200: MeterList}),
    ("post", "/v1/plans"): Operation(PlanRequest, {201: Plan}),
    ("get", "/v1/plans"): Operation(None, {200: PlanList}),
    ("get", "/v1/plans/{key}"): Operation(None, {200: Plan}),
    ("post", "/v1/plans/{key}/versions/{version}/publish"): Operation(None, {200: Plan}),
    ("delete", "/v1/plans/{key}/versions/{version}"): Operation(None, {200: Deleted}),
    ("post", "/v1/plans/{key}/migrate"): Operation(PlanMigrationRequest, {200: PlanMigration}),
    ("post", "/v1/customers"): Operation(CustomerRequest, {201: Customer}),
    ("get", "/v1/customers"): Operation(None, {200: CustomerList}),
    ("get", "/v1/customers/{customer_id}"): Operation(None, {200: Customer}),
    ("post", "/v1/subscriptions"): Operation(SubscriptionRequest, {201: Subscription}),
    ("get", "/v1/subscriptions"): Operation(None, {200: SubscriptionList}),
    ("post", "/v1/subscriptions/{subscription_id}/cancel"): Operation(
        CancelRequest, {200: SubscriptionRecord}, request_required=False
    ),
    ("post", "/v1/customers/{customer_id}/credits"): Operation(
        CreditGrantRequest, {201: CreditGrant, 200: CreditGrant}
    ),
    ("get", "/v1/customers/{customer_id}/balance"): Operation(None, {200: Balance}),
    ("post", "/v1/customers/{customer_id}/top-ups"): Operation(TopUpRequest, {201: TopUp}),
    ("get", "/v1/customers/{customer_id}/top-ups"): Operation(None, {200: TopUpList}),
    ("get", "/v1/top-ups/{top_up_id}"): Operation(None, {200: TopUp}),
    ("post", "/v1/invoice-runs"): Operation(
        InvoiceRunRequest, {202: InvoiceRun}, request_required=False
    ),
    ("get", "/v1/invoice-runs"): Operation(None, {200: InvoiceRunList}),
    ("get", "/v1/invoice-runs/{run_id}"): Operation(None, {200: InvoiceRun}),
    ("post", "/v1/invoice-runs/{run_id}/resume"): Operation(None, {202: InvoiceRun}),
    ("get", "/v1/invoices"): Operation(None, {200: InvoiceList}),
    ("get", "/v1/invoices/{invoice_id}"): Operation(None, {200: Invoice}),
    ("get", "/v1/invoices/{invoice_id}/payments"): Operation(None, {200: Outcome}),
    ("post", "/v1/invoices/{invoice_id}/finalize"): Operation(None, {200: Invoice}),
    ("post", "/v1/invoices/{invoice_id}/void"): Operation(None, {200: Invoice}),
    ("post", "/v1/invoices/{invoice_id}/mark-paid"): Operation(None, {200: Invoice}),
    ("post", "/v1/invoices/{invoice_id}/mark-uncollectible"): Operation(None, {200: Invoice}),
    ("post", "/v1/invoices/{invoice_id}/pay"): Operation(None, {200: Outcome}),
    ("post", "/v1/payments/collect"): Operation(None, {200: Outcome}),
    ("post", "/v1/invoices/{invoice_id}/credit-notes"): Operation(
        CreditNoteRequest, {201: CreditNote}
    ),
    ("get", "/v1/credit-notes/{note_id}"): Operation(None, {200: CreditNote}),
    ("post", "/v1/exchange-rates"): Operation(ExchangeRateRequest, {201: ExchangeRate}),
    ("get", "/v1/exchange-rates"): Operation(None, {200: ExchangeRateList}),
    ("post", "/v1/providers/{provider}/webhook"): Operation(None, {200: Outcome}),
    ("post", "/v1/webhook-endpoints"): Operation(EndpointRequest, {201: EndpointWithSecret}),
    ("get", "/v1/webhook-endpoints"): Operation(None, {200: EndpointList}),
    ("get", "/v1/webhook-endpoints/{endpoint_id}"): Operation(None, {200: Endpoint}),
    ("delete", "/v1/webhook-endpoints/{endpoint_id}"): Operation(None, {200: Deleted}),
    ("post", "/v1/webhook-endpoints/{endpoint_id}/disable"): Operation(
        DisableRequest, {200: Endpoint}, request_required=False
    ),
    ("post", "/v1/webhook-endpoints/{endpoint_id}/enable"): Operation(None, {200: Endpoint}),
    ("get", "/v1/webhook-endpoints/{endpoint_id}/deliveries"): Operation(None, {200: DeliveryList}),
    ("post", "/v1/webhook-endpoints/{endpoint_id}/test"): Operation(None, {202: Outcome}),
    ("get", "/v1/customers/{customer_id}/alert-rules"): Operation(None, {200: AlertRuleList}),
    ("post", "/v1/customers/{customer_id}/alert-rules"): Operation(
        AlertRuleRequest, {201: AlertRule}
    ),
    ("delete", "/v1/customers/{customer_id}/alert-rules/{rule_id}"): Operation(
        None, {200: Outcome}
    ),
    ("get", "/v1/customers/{customer_id}/payment-methods"): Operation(
        None, {200: PaymentMethodList}
    ),
    ("post", "/v1/customers/{customer_id}/payment-methods/setup"): Operation(
        PaymentMethodSetupRequest, {201: PaymentMethodSetup}
    ),
    ("delete", "/v1/customers/{customer_id}/payment-methods/{method_id}"): Operation(
        None, {200: PaymentMethod}
    ),
    ("get", "/v1/customers/{customer_id}/auto-recharge"): Operation(None, {200: AutoRecharge}),
    ("put", "/v1/customers/{customer_id}/auto-recharge"): Operation(
        AutoRechargeRequest, {200: AutoRecharge}
    ),
    ("delete", "/v1/customers/{customer_id}/auto-recharge"): Operation(None, {200: AutoRecharge}),
    ("post", "/v1/portal-sessions"): Operation(PortalSessionRequest, {201: PortalSession}),
    ("post", "/v1/admin/keys"): Operation(KeyRequest, {201: NewApiKey}),
    ("get", "/v1/admin/keys"): Operation(None, {200: ApiKeyList}),
    ("post", "/v1/admin/keys/{key_id}/revoke"): Operation(None, {200: ApiKey}),
    ("post", "/v1/admin/reshard"): Operation(ReshardRequest, {200: ReshardResult}),
    ("get", "/v1/audit-events"): Operation(None, {200: AuditEventList}),
    ("post", "/v1/simulations"): Operation(SimulationRequest, {202: Simulation}),
    ("get", "/v1/simulations/{simulation_id}"): Operation(None, {200: Simulation}),
    ("post", "/v1/simulations/{simulation_id}/resume"): Operation(None, {202: Simulation}),
    ("get", "/v1/simulations/{simulation_id}/results"): Operation(None, {200: SimulationResults}),
    ("get", "/healthz"): Operation(None, {200: Health}),
}
