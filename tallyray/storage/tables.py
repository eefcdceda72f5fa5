"""The database schema, as SQLAlchemy Core tables. Changes go through an Alembic migration.

Money and decimal quantities are stored as decimal *text*: exact on every backend (SQLite has
no exact decimal type). Times are integer microseconds since the epoch, UTC. Every business
table carries ``env`` (``live`` or ``test``): the API key's environment scopes every query.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

Json = JSON().with_variant(JSONB(), "postgresql")
Micros = BigInteger
# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres wants a BIGINT identity.
Seq = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),
    Column("name", String(200)),
    Column("created_at", Micros, nullable=False),
    Column("revoked_at", Micros),
    # What the key may do: ``ingest``, ``read``, ``manage`` (comma-separated), or ``admin``.
    Column("scopes", String(64), nullable=False, server_default="ingest,read,manage"),
    Column("expires_at", Micros),
    # When the key was last used, to the minute or so (written in the background).
    Column("last_used_at", Micros),
    # Seeded from TALLYRAY_ADMIN_KEY: a new seeded key retires the one before.
    Column("seeded", Boolean, nullable=False, server_default=false()),
)

meters = Table(
    "meters",
    metadata,
    Column("env", String(8), nullable=False),
    Column("key", String(64), nullable=False),
    Column("definition", Json, nullable=False),
    Column("created_at", Micros, nullable=False),
    PrimaryKeyConstraint("env", "key"),
)

plans = Table(
    "plans",
    metadata,
    Column("env", String(8), nullable=False),
    Column("key", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", Json, nullable=False),
    Column("created_at", Micros, nullable=False),
    # ``published`` (subscribable) or ``draft`` (stored and simulated only; one per key).
    Column("status", String(16), nullable=False, server_default="published"),
    PrimaryKeyConstraint("env", "key", "version"),
)

customers = Table(
    "customers",
    metadata,
    Column("env", String(8), nullable=False),
    Column("id", String(255), nullable=False),
    Column("name", String(500)),
    Column("email", String(320)),
    Column("currency", String(3), nullable=False),
    Column("country", String(2)),
    Column("vat_id", String(64)),
    Column("address", Json),
    Column("billing_mode", String(16), nullable=False),
    Column("overdraft", String(50), nullable=False),
    # Two limits on a period's spend: the operator's, and the customer's own (set in the
    # portal); the smaller applies.
    Column("credit_limit", String(50)),
    Column("spend_cap", String(50)),
    Column("created_at", Micros, nullable=False),
    # Invoicing details: locale, region, tax_exempt, exempt_reason, payment_provider,
    # payment_method, provider_customer_id (JSON, so adding one needs no migration).
    Column("billing", Json),
    PrimaryKeyConstraint("env", "id"),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("plan_key", String(64), nullable=False),
    Column("plan_version", Integer, nullable=False),
    Column("start", Micros, nullable=False),
    Column("end", Micros),
    Column("created_at", Micros, nullable=False),
    Column("anchor", String(16), nullable=False, server_default="calendar"),
    Column("discount", Json),
    Index("ix_subscriptions_customer", "env", "customer_id"),
)

credit_grants = Table(
    "credit_grants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("amount", String(50), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("expires_at", Micros),
    Column("created_at", Micros, nullable=False),
    Column("shard", Integer, nullable=False),
    # The shard's log position when the grant was booked: replay adds it after that event.
    Column("position", BigInteger, nullable=False),
    Index("ix_credit_grants_customer", "env", "customer_id"),
    Index("ix_credit_grants_shard", "shard", "position"),
)

events = Table(
    "events",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("env", String(8), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("ts", Micros, nullable=False),
    Column("properties", Text, nullable=False),
    Column("received_at", Micros, nullable=False),
    # Idempotency is event_ids' (below). SQLite keeps this older constraint too; on
    # PostgreSQL the table is partitioned by month on ts (migration 0013, storage/partitions.py)
    # and its primary key is (seq, ts), as a partitioned table's keys must hold the ts.
    UniqueConstraint("env", "customer_id", "event_id", name="uq_events_idempotency"),
    # No (shard, seq) index: replay walks the primary key from the checkpoint's position
    # and skips other shards' rows. No (customer, ts) index either: reading one customer's
    # events goes through event_chunks. Every index costs ingest throughput.
)

event_ids = Table(
    "event_ids",
    metadata,
    # Every event id ever stored, per customer: how a retried event is recognised as a
    # duplicate whatever its age. Not partitioned, and retention never deletes from it (a
    # partitioned table's unique key would have to hold ts; see migration 0013).
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    # The time of the commit that stored it (its events row's received_at): what a retried
    # settle counts by, without searching every partition.
    Column("received_at", Micros, nullable=False),
    PrimaryKeyConstraint("env", "customer_id", "event_id"),
)

event_chunks = Table(
    "event_chunks",
    metadata,
    # Where one customer's events of one group commit lie in the log: every one of them has
    # first_seq <= seq <= last_seq (rows of other customers may lie in between), and
    # ts_min <= ts <= ts_max. One row per customer per commit instead of an index entry per
    # event: a (customer, ts) index on events cost ~35% of the log's insert time.
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("first_seq", Seq, nullable=False),
    Column("last_seq", Seq, nullable=False),
    Column("ts_min", Micros, nullable=False),
    Column("ts_max", Micros, nullable=False),
    Column("events", Integer, nullable=False),
    Index("ix_event_chunks_customer", "env", "customer_id", "ts_max"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("amount", String(50), nullable=False),
    # Units held per unit limit of the plan, as JSON ({"output_tokens/day": "1000"});
    # NULL when the hold holds no units.
    Column("units", Text),
    Column("expires_at", Micros, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Micros, nullable=False),
    # The time of the commit that settled or released it (a retried settle finds its events
    # by it).
    Column("finished_at", Micros),
    Index("ix_holds_shard_status", "shard", "status"),
)

shard_layout = Table(
    "shard_layout",
    metadata,
    # One row (id 1): how many shards own the data; ``epoch`` counts the reshards
    # (tallyray.storage.layout).
    Column("id", Integer, primary_key=True),
    Column("shard_count", Integer, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("changed_at", Micros, nullable=False),
)

shard_checkpoints = Table(
    "shard_checkpoints",
    metadata,
    Column("shard", Integer, primary_key=True),
    Column("shard_count", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("taken_at", Micros, nullable=False),
)

account_checkpoints = Table(
    "account_checkpoints",
    metadata,
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("state", Json, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("taken_at", Micros, nullable=False),
    PrimaryKeyConstraint("env", "customer_id"),
    Index("ix_account_checkpoints_shard", "shard"),
)

# -- invoicing ---------------------------------------------------------------------------------

period_closes = Table(
    "period_closes",
    metadata,
    # Periods of ``env`` that ended at or before ``cutoff`` are closed on this shard.
    Column("shard", Integer, nullable=False),
    Column("env", String(8), nullable=False),
    Column("cutoff", Micros, nullable=False),
    Column("closed_at", Micros, nullable=False),
    PrimaryKeyConstraint("shard", "env"),
)

billing_periods = Table(
    "billing_periods",
    metadata,
    # A closed period's final checkpoint: what the invoice prices. A period without a row had
    # no usage.
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("start", Micros, nullable=False),
    Column("end", Micros, nullable=False),
    Column("shard", Integer, nullable=False),
    Column("usage", Json, nullable=False),
    Column("spend", String(50), nullable=False),
    Column("costs", Json, nullable=False),
    Column("burned", Json, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("closed_at", Micros, nullable=False),
    # When a plan change cut the period: each segment's plan, usage and cost (see
    # tallyray/pricing/segments.py); NULL: the period was priced whole under one plan.
    Column("segments", Json),
    PrimaryKeyConstraint("env", "customer_id", "start"),
)

exchange_rates = Table(
    "exchange_rates",
    metadata,
    Column("env", String(8), nullable=False),
    Column("base", String(3), nullable=False),
    Column("quote", String(3), nullable=False),
    Column("as_of", Micros, nullable=False),
    Column("rate", String(50), nullable=False),
    Column("source", String(200), nullable=False),
    Column("created_at", Micros, nullable=False),
    PrimaryKeyConstraint("env", "base", "quote", "as_of"),
)

invoice_runs = Table(
    "invoice_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("until", Micros, nullable=False),
    # pending, running, succeeded, completed_with_errors, failed
    Column("status", String(32), nullable=False),
    Column("options", Json, nullable=False),
    Column("customers", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("invoices", Integer, nullable=False),
    Column("errors", Json, nullable=False),
    Column("created_at", Micros, nullable=False),
    Column("finished_at", Micros),
    # the schedule slot that started the run (tallyray.invoicing.scheduler); NULL by hand
    Column("scheduled_for", Micros),
    # who drives the run and when it last said so (tallyray.storage.leases)
    Column("driver", String(120)),
    Column("heartbeat_at", Micros),
    Index("ix_invoice_runs_env", "env", "created_at"),
    Index("ux_invoice_runs_scheduled", "env", "scheduled_for", unique=True),
)

invoices = Table(
    "invoices",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("period_start", Micros, nullable=False),
    Column("period_end", Micros, nullable=False),
    Column("status", String(16), nullable=False),
    Column("number", String(64)),
    Column("currency", String(3), nullable=False),
    Column("total", String(50), nullable=False),
    Column("amount_due", String(50), nullable=False),
    Column("document", Json, nullable=False),
    Column("run_id", String(40)),
    Column("payment_provider", String(16)),
    Column("payment_reference", String(255)),
    Column("payment_attempts", Integer, nullable=False),
    Column("next_attempt_at", Micros),
    Column("created_at", Micros, nullable=False),
    Column("finalized_at", Micros),
    Column("paid_at", Micros),
    Column("closed_at", Micros),
    # Idempotency of invoice runs: one invoice per customer and period, ever.
    UniqueConstraint("env", "customer_id", "period_start", name="uq_invoices_period"),
    UniqueConstraint("env", "number", name="uq_invoices_number"),
    Index("ix_invoices_status", "env", "status", "next_attempt_at"),
)

credit_notes = Table(
    "credit_notes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("invoice_id", String(40), nullable=False),
    Column("number", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", String(50), nullable=False),
    Column("document", Json, nullable=False),
    Column("created_at", Micros, nullable=False),
    UniqueConstraint("env", "number", name="uq_credit_notes_number"),
    Index("ix_credit_notes_invoice", "env", "invoice_id"),
)

document_numbers = Table(
    "document_numbers",
    metadata,
    # The next number of each sequence, taken in the transaction that issues the document:
    # a rolled-back issue rolls the number back too, so numbers have no gaps.
    Column("env", String(8), nullable=False),
    Column("entity", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("next", BigInteger, nullable=False),
    PrimaryKeyConstraint("env", "entity", "kind"),
)

payments = Table(
    "payments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("invoice_id", String(40), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("provider", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reference", String(255)),
    Column("detail", Json, nullable=False),
    Column("created_at", Micros, nullable=False),
    Index("ix_payments_invoice", "env", "invoice_id"),
)

provider_events = Table(
    "provider_events",
    metadata,
    # Each provider webhook event is processed once.
    Column("provider", String(16), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("env", String(8), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("invoice_id", String(40)),
    Column("received_at", Micros, nullable=False),
    PrimaryKeyConstraint("provider", "event_id"),
)

payment_methods = Table(
    "payment_methods",
    metadata,
    # A card the customer saved through its provider's own page (Stripe SetupIntent, Adyen
    # tokenization). Tallyray keeps the provider's reference and what a person needs to
    # recognise the card; never a card number. Saved from the provider's signed webhook only.
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("provider", String(16), nullable=False),
    # ``pm_…`` (Stripe), a ``storedPaymentMethodId`` (Adyen).
    Column("reference", String(255), nullable=False),
    Column("brand", String(32)),
    Column("last4", String(4)),
    Column("exp_month", Integer),
    Column("exp_year", Integer),
    # The one the customer's off-session charges use (invoices, auto-recharge).
    Column("is_default", Boolean, nullable=False, server_default=false()),
    Column("created_at", Micros, nullable=False),
    Column("removed_at", Micros),
    UniqueConstraint("env", "provider", "reference", name="uq_payment_methods_reference"),
    Index("ix_payment_methods_customer", "env", "customer_id"),
)

payment_setups = Table(
    "payment_setups",
    metadata,
    # A customer sent to its provider's page to save a card (``set_…``): the signed webhook
    # names it, and it says whose card it is and which card it replaces. Adyen signs only the
    # merchantReference, so the customer comes from here, never from the notification.
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("provider_reference", String(255)),
    Column("url", Text),
    Column("replaces", String(40)),
    Column("method_id", String(40)),
    Column("created_at", Micros, nullable=False),
    Column("completed_at", Micros),
)

auto_recharge_settings = Table(
    "auto_recharge_settings",
    metadata,
    # One customer's auto-recharge (tallyray.pricing.recharge_rules); amounts as decimal text
    # in the customer's currency. ``disabled_reason`` says why Tallyray turned it off.
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("threshold", String(50), nullable=False),
    Column("amount", String(50), nullable=False),
    Column("monthly_cap", String(50), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("disabled_reason", String(500)),
    Column("updated_at", Micros, nullable=False),
    PrimaryKeyConstraint("env", "customer_id"),
)

auto_recharges = Table(
    "auto_recharges",
    metadata,
    # One row per crossing of the threshold, written by the shard in the transaction that
    # writes the crossing (tallyray.storage.alerts.write_messages): ``recharge:<env>:<customer>
    # :<n>``. The unique (env, customer, crossing) makes it the one durable record of the
    # crossing; every charge of it is a credit purchase named after (id, attempt).
    Column("id", String(200), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("crossing", Integer, nullable=False),
    # requested, charging, pending (charged, the webhook books it), retry, succeeded,
    # failed (the last attempt declined), capped, skipped (auto-recharge off by then).
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("month", String(7), nullable=False),
    Column("amount", String(50)),
    Column("currency", String(3)),
    Column("purchase_id", String(40)),
    Column("next_attempt_at", Micros),
    Column("claimed_until", Micros),
    Column("failure", Json),
    Column("created_at", Micros, nullable=False),
    Column("updated_at", Micros, nullable=False),
    UniqueConstraint("env", "customer_id", "crossing", name="uq_auto_recharges_crossing"),
    Index("ix_auto_recharges_due", "status", "next_attempt_at"),
    Index("ix_auto_recharges_customer", "env", "customer_id", "month"),
)

credit_purchases = Table(
    "credit_purchases",
    metadata,
    # Prepaid credit bought through a payment provider: a top-up (the customer on the
    # provider's hosted page) or a recharge (a saved payment method, off session). The grant is
    # booked by the customer's shard in the transaction that moves the status to ``paid``
    # (storage.purchases.mark_paid), so a purchase books at most one grant.
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount", String(50), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("provider", String(16), nullable=False),
    # The provider's object for this purchase: a Checkout Session, an Adyen session, a
    # PaymentIntent or a pspReference. Unique: one provider object pays one purchase.
    Column("provider_reference", String(255), unique=True),
    # What the provider's success webhook named (the PaymentIntent, the pspReference).
    Column("payment_reference", String(255)),
    Column("checkout", Json),
    Column("failure", Json),
    Column("grant_id", String(40)),
    Column("document_id", String(40)),
    Column("document", Json),
    Column("created_at", Micros, nullable=False),
    Column("updated_at", Micros, nullable=False),
    Column("paid_at", Micros),
    Index("ix_credit_purchases_customer", "env", "customer_id", "id"),
)

# -- alerts and webhooks -----------------------------------------------------------------------

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("threshold", String(50), nullable=False),
    Column("meter", String(64)),
    Column("name", String(200)),
    Column("created_at", Micros, nullable=False),
    Index("ix_alert_rules_customer", "env", "customer_id"),
)

outbox = Table(
    "outbox",
    metadata,
    # Messages for webhook endpoints, written in the transaction of what they announce. The
    # id is deterministic (an alert crossing, an invoice's state change), so writing one twice
    # (a shard replaying its log) stores it once.
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(200), nullable=False, unique=True),
    Column("env", String(8), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", Json, nullable=False),
    Column("created_at", Micros, nullable=False),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", String(200), nullable=False),
    Column("event_types", Json, nullable=False),
    Column("description", String(500)),
    Column("status", String(16), nullable=False),
    Column("disabled_reason", String(500)),
    Column("created_at", Micros, nullable=False),
    Index("ix_webhook_endpoints_env", "env"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("endpoint_id", String(40), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Micros),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    Column("created_at", Micros, nullable=False),
    Column("updated_at", Micros, nullable=False),
    UniqueConstraint("endpoint_id", "message_id", name="uq_webhook_deliveries_message"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint", "env", "endpoint_id", "created_at"),
)

outbox_cursors = Table(
    "outbox_cursors",
    metadata,
    # How far the webhook deliverer has fanned the outbox out into deliveries.
    Column("name", String(40), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # The answer to a request sent with an Idempotency-Key header, kept 24 hours: the same key
    # and body get it again; the same key with another body is a conflict. ``status`` is null
    # while the first request is being answered.
    Column("env", String(8), nullable=False),
    Column("key", String(255), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer),
    Column("content_type", String(100)),
    Column("body", LargeBinary),
    Column("created_at", Micros, nullable=False),
    PrimaryKeyConstraint("env", "key"),
    Index("ix_idempotency_keys_created", "created_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    # Every change made through the API or the portal, written in the change's transaction.
    # Append-only: no API updates or deletes a row.
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("created_at", Micros, nullable=False),
    Column("actor_type", String(16), nullable=False),  # key | admin | portal | provider
    Column("actor_id", String(255), nullable=False),
    Column("actor_name", String(200)),
    Column("action", String(64), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_id", String(255), nullable=False),
    Column("request_id", String(128)),
    Column("summary", Json, nullable=False),
    Index("ix_audit_events_object", "env", "object_type", "object_id", "created_at"),
    Index("ix_audit_events_env", "env", "created_at"),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    # Secrets the server makes for itself and every replica must share (the portal's token
    # signing key), created on first use.
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("created_at", Micros, nullable=False),
)

unpriced_usage = Table(
    "unpriced_usage",
    metadata,
    # Usage that no charge of the customer's plan prices, for plans that flag it: per
    # customer, plan version, meter, group and period, how many events and the group's
    # quantity. Written by the shards with each checkpoint (absolute figures of the account's
    # state, so a replay writes the same). ``id`` is a hash of everything it is per.
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("plan_key", String(64), nullable=False),
    Column("plan_version", Integer),
    Column("meter", String(64), nullable=False),
    Column("groups", Json, nullable=False),
    Column("period_start", Micros, nullable=False),
    Column("period_end", Micros, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("quantity", String(64), nullable=False),
    Column("updated_at", Micros, nullable=False),
    Index("ix_unpriced_usage_env", "env", "period_start", "id"),
    Index("ix_unpriced_usage_customer", "env", "customer_id", "period_start"),
)

# -- the pricing sandbox ---------------------------------------------------------------------

simulations = Table(
    "simulations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("env", String(8), nullable=False),
    # pending, running, succeeded, failed (``tallyray.simulation.jobs.SimulationState``;
    # ``interrupted`` is never stored: it is a live state whose driver stopped beating)
    Column("state", String(16), nullable=False),
    # the request as checked: plan definition and reference, range, selection
    Column("request", Json, nullable=False),
    Column("customers", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("errors", Json, nullable=False),
    # the summary over every customer, written when the last chunk is done
    Column("summary", Json),
    Column("created_at", Micros, nullable=False),
    Column("finished_at", Micros),
    # the process driving the job and when it last said so (``storage.leases``)
    Column("driver", String(120)),
    Column("heartbeat_at", Micros),
    Index("ix_simulations_env", "env", "created_at"),
)

# A simulation's customers, cut into chunks when the job is made; a chunk is ``done`` in the
# transaction that stores its results, so a resumed job runs only the others, and a chunk
# run twice (a Ray retry, a driver that lost the job) counts once.
simulation_chunks = Table(
    "simulation_chunks",
    metadata,
    Column("simulation_id", String(40), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("customers", Json, nullable=False),
    Column("done", Boolean, nullable=False),
    PrimaryKeyConstraint("simulation_id", "seq"),
)

simulation_results = Table(
    "simulation_results",
    metadata,
    Column("simulation_id", String(40), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("currency", String(3), nullable=False),
    # decimal text in the customer's currency, rounded to its minor unit
    Column("actual", Text, nullable=False),
    Column("simulated", Text, nullable=False),
    Column("difference", Text, nullable=False),
    # the per-line comparison, periods and where "actual" came from
    Column("detail", Json, nullable=False),
    PrimaryKeyConstraint("simulation_id", "customer_id"),
)
