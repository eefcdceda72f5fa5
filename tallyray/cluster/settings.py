"""Server settings: flags override environment variables, which override defaults."""

from __future__ import annotations

import os
import ssl
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from tallyray.access import ADMIN, looks_like_key
from tallyray.actors.limits import (
    MAX_ALERT_RULES_PER_CUSTOMER,
    MAX_GROUPS_PER_METER,
    MAX_HOLDS_PER_CUSTOMER,
    MAX_UNIQUE_VALUES,
    Limits,
)
from tallyray.actors.shard_line import LineOptions, LineTLS
from tallyray.clock import Clock, clock_for, offset_to
from tallyray.credentials import database_url, read_secret
from tallyray.errors import InvalidInput
from tallyray.invoicing.scheduler import RunSchedule, parse_schedule
from tallyray.pricing.events import parse_timestamp
from tallyray.serve.api import CUSTOMER_CACHE_SIZE
from tallyray.storage.db import DEFAULT_DATABASE_URL, normalize_url


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    shards: int | None = None
    """How many shard actors: the count stored in the database (``None`` until the server
    has read it, :func:`tallyray.storage.layout.settle_shard_count`); a count given here
    must match it (``tallyray reshard`` changes it)."""
    port: int = 8000
    host: str = "127.0.0.1"
    admin_key: str | None = None
    config_path: str | None = None
    ray_address: str | None = None
    checkpoint_seconds: float = 5.0
    grace_seconds: int = 3 * 86_400
    replicas: int = 1
    auto_create_customers: bool = False
    default_currency: str = "EUR"
    # Payment providers, per environment: ``stripe_*``/``adyen_*`` serve the live
    # environment, ``*_test_*`` the test one (tallyray.cluster.providers checks them).
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    stripe_test_api_key: str | None = None
    stripe_test_webhook_secret: str | None = None
    stripe_test_api_base: str | None = None
    adyen_api_key: str | None = None
    adyen_merchant_account: str | None = None
    adyen_hmac_key: str | None = None
    adyen_api_base: str | None = None
    adyen_live_url_prefix: str | None = None
    adyen_test_api_key: str | None = None
    adyen_test_merchant_account: str | None = None
    adyen_test_hmac_key: str | None = None
    adyen_test_api_base: str | None = None
    webhook_retry_delays: str | None = None
    """Waits between webhook delivery attempts, e.g. ``"5s,5m,30m,2h,5h,10h,14h"``."""
    webhook_allow_private: bool = False
    """Let webhooks go to loopback, private, link-local and other non-public addresses
    (tests, on-premise receivers); off, they are refused (:mod:`tallyray.alerts.egress`)."""
    dunning_seconds: float = 300.0
    recharge_seconds: float = 15.0
    """How often each replica sweeps auto-recharge crossings (:mod:`tallyray.invoicing.recharge`);
    0 turns the sweep off."""
    invoice_schedule: str = "live,test"
    """The environments whose invoice runs start themselves (``"off"``: none); see
    :mod:`tallyray.invoicing.scheduler`."""
    invoice_run_at: str = "02:00"
    """The time of day (UTC, HH:MM) at which scheduled invoice runs start."""
    """How often the server collects payments that are due (the dunning schedule)."""
    commit_gather_ms: float = 50.0
    """Under load, how long a shard's commit of events may wait for more (0: never)."""
    access_log: bool = False
    """Serve's per-request access log lines (~3 % of the ingress's CPU on quota checks)."""
    rate_limit_per_second: float = 2000.0
    """Requests a second per API key on each replica (0: no limit)."""
    rate_limit_burst: float = 4000.0
    """Requests a key may send at once before the per-second rate applies."""
    portal_rate_limit_per_second: float = 5.0
    """Requests a second per portal link on each replica (0: no limit)."""
    portal_rate_limit_burst: float = 30.0
    key_cache_seconds: float = 2.0
    """How long a replica trusts what it knows of a key: a revoked key is refused everywhere
    within this."""
    customer_cache_size: int = CUSTOMER_CACHE_SIZE
    """Customers each replica keeps in its cache at most (:class:`~tallyray.serve.api.Caches`,
    least recently used first out)."""
    public_docs: bool = True
    """``/docs`` and ``/openapi.json`` answer without a key (``TALLYRAY_PUBLIC_DOCS=0``: not
    at all)."""
    clock_offset_us: int = 0
    """Every process's clock runs this far from the machine's (``TALLYRAY_CLOCK_START``
    sets it so that the server's clock starts at a given instant; tests and demos only)."""
    max_holds_per_customer: int = MAX_HOLDS_PER_CUSTOMER
    max_alert_rules_per_customer: int = MAX_ALERT_RULES_PER_CUSTOMER
    max_groups_per_meter: int = MAX_GROUPS_PER_METER
    max_unique_values: int = MAX_UNIQUE_VALUES
    """Caps on one customer's state (:mod:`tallyray.actors.limits`)."""
    event_retention_days: int | None = None
    """Events older than this many days may be removed from the log (whole months: PostgreSQL
    drops monthly partitions, SQLite deletes rows), never those an open or uninvoiced period,
    late events or the dedup window still need (:mod:`tallyray.storage.retention`). ``None``
    keeps every event."""
    event_export_dir: str | None = None
    """Where retention writes the events it removes, as Parquet by day, before it removes
    them (``None``: removed without an export)."""
    secrets_file: str | None = None
    """Where this deployment's processes find the secrets their environment lacks
    (:mod:`tallyray.credentials`); ``tallyray serve`` writes one for its own machine."""
    shard_resource: str | None = None
    """Shards run only on nodes that declare this custom Ray resource (each takes
    :data:`~tallyray.cluster.placement.RESOURCE_SHARE` of it); ``None``: on any node. Either
    way they are spread over those nodes (docs/deploy.md, "Placement")."""
    ingress_resource: str | None = None
    """Ingress replicas (the nodes that serve HTTP) run only on nodes that declare this
    custom Ray resource; ``None``: on any node."""
    replicas_per_node: int = 0
    """Ingress replicas on each node that may serve HTTP (the nodes alive at start); 0: the
    number of replicas is ``replicas``, wherever Serve puts them."""
    shard_line_remote: bool = True
    """Shards offer their line on TCP at their node's address, so that replicas on other
    nodes skip the Ray call too (:mod:`tallyray.actors.shard_line`)."""
    shard_line_tls_cert: str | None = None
    """TLS on the shard line between nodes: the certificate (PEM) every shard serves..."""
    shard_line_tls_key: str | None = None
    """... its private key (PEM) ..."""
    shard_line_tls_ca: str | None = None
    """... and the CA replicas check it against (default: the certificate itself)."""

    #: The fields that are secrets: they reach other processes only through the environment
    #: or a secrets file, never as arguments (:meth:`shared`).
    SECRETS: ClassVar[frozenset[str]] = frozenset(
        {
            "database_url",
            "admin_key",
            "stripe_api_key",
            "stripe_webhook_secret",
            "stripe_test_api_key",
            "stripe_test_webhook_secret",
            "adyen_api_key",
            "adyen_hmac_key",
            "adyen_test_api_key",
            "adyen_test_hmac_key",
        }
    )

    #: environment variable → field
    ENV: ClassVar[dict[str, str]] = {
        "TALLYRAY_DATABASE_URL": "database_url",
        "TALLYRAY_SHARDS": "shards",
        "TALLYRAY_PORT": "port",
        "TALLYRAY_HOST": "host",
        "TALLYRAY_ADMIN_KEY": "admin_key",
        "TALLYRAY_CONFIG": "config_path",
        "TALLYRAY_RAY_ADDRESS": "ray_address",
        "TALLYRAY_CHECKPOINT_SECONDS": "checkpoint_seconds",
        "TALLYRAY_GRACE_SECONDS": "grace_seconds",
        "TALLYRAY_REPLICAS": "replicas",
        "TALLYRAY_AUTO_CREATE_CUSTOMERS": "auto_create_customers",
        "TALLYRAY_DEFAULT_CURRENCY": "default_currency",
        "TALLYRAY_STRIPE_API_KEY": "stripe_api_key",
        "TALLYRAY_STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
        "TALLYRAY_STRIPE_API_BASE": "stripe_api_base",
        "TALLYRAY_ADYEN_API_KEY": "adyen_api_key",
        "TALLYRAY_ADYEN_MERCHANT_ACCOUNT": "adyen_merchant_account",
        "TALLYRAY_ADYEN_HMAC_KEY": "adyen_hmac_key",
        "TALLYRAY_ADYEN_API_BASE": "adyen_api_base",
        "TALLYRAY_ADYEN_LIVE_URL_PREFIX": "adyen_live_url_prefix",
        "TALLYRAY_STRIPE_TEST_API_KEY": "stripe_test_api_key",
        "TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": "stripe_test_webhook_secret",
        "TALLYRAY_STRIPE_TEST_API_BASE": "stripe_test_api_base",
        "TALLYRAY_ADYEN_TEST_API_KEY": "adyen_test_api_key",
        "TALLYRAY_ADYEN_TEST_MERCHANT_ACCOUNT": "adyen_test_merchant_account",
        "TALLYRAY_ADYEN_TEST_HMAC_KEY": "adyen_test_hmac_key",
        "TALLYRAY_ADYEN_TEST_API_BASE": "adyen_test_api_base",
        "TALLYRAY_DUNNING_SECONDS": "dunning_seconds",
        "TALLYRAY_RECHARGE_SECONDS": "recharge_seconds",
        "TALLYRAY_INVOICE_SCHEDULE": "invoice_schedule",
        "TALLYRAY_INVOICE_RUN_AT": "invoice_run_at",
        "TALLYRAY_WEBHOOK_RETRY_DELAYS": "webhook_retry_delays",
        "TALLYRAY_WEBHOOK_ALLOW_PRIVATE": "webhook_allow_private",
        "TALLYRAY_ACCESS_LOG": "access_log",
        "TALLYRAY_COMMIT_GATHER_MS": "commit_gather_ms",
        "TALLYRAY_RATE_LIMIT": "rate_limit_per_second",
        "TALLYRAY_RATE_LIMIT_BURST": "rate_limit_burst",
        "TALLYRAY_PORTAL_RATE_LIMIT": "portal_rate_limit_per_second",
        "TALLYRAY_PORTAL_RATE_LIMIT_BURST": "portal_rate_limit_burst",
        "TALLYRAY_KEY_CACHE_SECONDS": "key_cache_seconds",
        "TALLYRAY_CUSTOMER_CACHE_SIZE": "customer_cache_size",
        "TALLYRAY_PUBLIC_DOCS": "public_docs",
        "TALLYRAY_MAX_HOLDS_PER_CUSTOMER": "max_holds_per_customer",
        "TALLYRAY_MAX_ALERT_RULES_PER_CUSTOMER": "max_alert_rules_per_customer",
        "TALLYRAY_MAX_GROUPS_PER_METER": "max_groups_per_meter",
        "TALLYRAY_MAX_UNIQUE_VALUES": "max_unique_values",
        "TALLYRAY_SECRETS_FILE": "secrets_file",
        "TALLYRAY_EVENT_RETENTION_DAYS": "event_retention_days",
        "TALLYRAY_EVENT_EXPORT_DIR": "event_export_dir",
        "TALLYRAY_SHARD_RESOURCE": "shard_resource",
        "TALLYRAY_INGRESS_RESOURCE": "ingress_resource",
        "TALLYRAY_REPLICAS_PER_NODE": "replicas_per_node",
        "TALLYRAY_SHARD_LINE_REMOTE": "shard_line_remote",
        "TALLYRAY_SHARD_LINE_TLS_CERT": "shard_line_tls_cert",
        "TALLYRAY_SHARD_LINE_TLS_KEY": "shard_line_tls_key",
        "TALLYRAY_SHARD_LINE_TLS_CA": "shard_line_tls_ca",
    }

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for variable, name in cls.ENV.items():
            raw = os.environ.get(variable)
            if raw is None or raw == "":
                continue
            kind = types[name]
            if kind in ("int", "int | None"):
                values[name] = int(raw)
            elif kind == "float":
                values[name] = float(raw)
            elif kind == "bool":
                values[name] = _flag(raw)
            else:
                values[name] = raw
        secrets_file = overrides.get("secrets_file") or values.get("secrets_file")
        for variable, name in cls.ENV.items():
            if name in cls.SECRETS and name not in values:  # a *_FILE, or the secrets file
                found = read_secret(variable, secrets_file)
                if found:
                    values[name] = found
        start = overrides.pop("clock_start", None) or os.environ.get("TALLYRAY_CLOCK_START")
        if start:
            values["clock_offset_us"] = offset_to(_instant(start))
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.shards is not None and settings.shards < 1:
            raise ValueError("TALLYRAY_SHARDS must be at least 1")
        if settings.admin_key is not None and not _admin_key_shaped(settings.admin_key):
            raise InvalidInput(
                "TALLYRAY_ADMIN_KEY must look like a generated admin key: trk_admin_ followed "
                "by at least 32 letters, digits, '-' or '_'. Make one with "
                "`tallyray keys new-admin-key`."
            )
        if settings.event_retention_days is not None and settings.event_retention_days < 1:
            raise ValueError(
                "TALLYRAY_EVENT_RETENTION_DAYS must be at least 1 (leave it unset to keep "
                "every event)"
            )
        for variable, name in cls.ENV.items():
            if name.startswith("max_") and getattr(settings, name) < 1:
                raise ValueError(f"{variable} must be at least 1")
        if settings.customer_cache_size < 1:
            raise ValueError("TALLYRAY_CUSTOMER_CACHE_SIZE must be at least 1")
        if settings.replicas_per_node < 0:
            raise ValueError("TALLYRAY_REPLICAS_PER_NODE must be 0 (not used) or more")
        settings.line_options  # noqa: B018 — unreadable TLS files stop the start, with why
        settings.run_schedule  # noqa: B018 — a bad schedule stops the start, with its reason
        config = settings.config_path
        return cls(
            **{
                **asdict(settings),
                "database_url": _absolute(settings.database_url),
                "config_path": str(Path(config).resolve()) if config else None,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shared(self) -> dict[str, Any]:
        """What other processes may be handed as arguments: everything but the secrets,
        which each of them reads itself (:meth:`from_shared`)."""
        return {k: None if k in self.SECRETS else v for k, v in asdict(self).items()}

    @classmethod
    def from_shared(cls, shared: dict[str, Any]) -> Settings:
        """The settings another process was handed, with the secrets read where it runs."""
        found = {}
        for variable, name in cls.ENV.items():
            if name in cls.SECRETS:
                value = read_secret(variable, shared.get("secrets_file"))
                if value:
                    found[name] = value
        values = {**shared, **found}
        values["database_url"] = database_url(found.get("database_url"), None)
        return cls(**values)

    def secret_values(self) -> dict[str, str]:
        """The secrets this process holds, by environment variable."""
        out = {}
        for variable, name in self.ENV.items():
            value = getattr(self, name)
            if name in self.SECRETS and value:
                out[variable] = str(value)
        return out

    @property
    def shard_count(self) -> int:
        """The shard count, once settled from the database (see :attr:`shards`)."""
        if self.shards is None:
            raise RuntimeError("the shard count is read from the database before shards start")
        return self.shards

    @property
    def clock(self) -> Clock:
        """This deployment's clock (:mod:`tallyray.clock`)."""
        return clock_for(self.clock_offset_us)

    @property
    def run_schedule(self) -> RunSchedule:
        """When invoice runs start themselves (:mod:`tallyray.invoicing.scheduler`)."""
        return parse_schedule(self.invoice_schedule, self.invoice_run_at)

    @property
    def line_options(self) -> LineOptions:
        """How shards offer their lines and replicas use them; raises ``ValueError`` naming
        the setting when the TLS files are incomplete or unreadable."""
        cert, key, ca = self.shard_line_tls_cert, self.shard_line_tls_key, self.shard_line_tls_ca
        if not (cert or key or ca):
            return LineOptions(remote=self.shard_line_remote)
        if not (cert and key):
            raise ValueError(
                "TLS on the shard line needs both TALLYRAY_SHARD_LINE_TLS_CERT and "
                "TALLYRAY_SHARD_LINE_TLS_KEY (and optionally TALLYRAY_SHARD_LINE_TLS_CA)"
            )
        tls = LineTLS(cert, key, ca)
        try:
            tls.server_context()
            tls.client_context()
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                "TALLYRAY_SHARD_LINE_TLS_CERT/KEY/CA: cannot load the certificate, key or CA "
                f"({error}); they must be PEM files readable on every node"
            ) from None
        return LineOptions(remote=self.shard_line_remote, tls=tls)

    @property
    def limits(self) -> Limits:
        """The caps on one customer's state, for the shards and the API."""
        return Limits(
            holds_per_customer=self.max_holds_per_customer,
            alert_rules_per_customer=self.max_alert_rules_per_customer,
            groups_per_meter=self.max_groups_per_meter,
            unique_values=self.max_unique_values,
        )


def _admin_key_shaped(key: str) -> bool:
    return key.startswith(f"trk_{ADMIN}_") and looks_like_key(key)


def _instant(text: str) -> int:
    try:
        return parse_timestamp(text)
    except ValueError as error:
        raise ValueError(f"TALLYRAY_CLOCK_START: {error}") from None


def _absolute(url: str) -> str:
    """Shard actors run in other processes, maybe in other directories: a relative SQLite
    path must be made absolute here, where it was meant."""
    url = normalize_url(url)
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url
