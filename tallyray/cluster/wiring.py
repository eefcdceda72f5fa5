"""Starting and stopping a Tallyray deployment on Ray."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import ray
from ray import serve
from sqlalchemy import Engine

from tallyray.access import ENVIRONMENTS
from tallyray.actors.shard import ShardActor
from tallyray.alerts.deliverer import start_webhooks
from tallyray.cluster.placement import ingress_options, shard_options
from tallyray.cluster.settings import Settings
from tallyray.credentials import write_secrets_file
from tallyray.errors import ConfigError, InvalidInput, Problem
from tallyray.invoicing.config import parse_invoicing_config
from tallyray.invoicing.tax import parse_tax_config
from tallyray.pricing.config import parse_config
from tallyray.serve.shards import NAMESPACE, shard_name
from tallyray.storage.catalog import (
    CUSTOMER_FIELDS,
    Catalog,
    CustomerRecord,
    customer_from_json,
)
from tallyray.storage.db import make_engine, migrate
from tallyray.storage.keys import KeyStore
from tallyray.storage.layout import settle_shard_count
from tallyray.storage.partitions import ensure_partitions
from tallyray.storage.retention import RetentionResult, apply_retention

log = logging.getLogger("tallyray.cluster")

EVENT_LOG_MAINTENANCE_SECONDS = 3600.0
"""How often ``tallyray serve`` checks the event log's partitions and retention."""

APP_NAME = "tallyray"

SERVE_CONTROL_LOOP_SECONDS = "0.5"
"""How often Serve's controller runs its loop in a Ray that ``tallyray serve`` starts (Serve's
default is 0.1 s). At 0.1 s the controller and the GCS took ~4.7 % of a core on the 2-core
box, at 0.5 s ~1.8 % (docs/benchmarks.md, "Leaner generators, a quieter Serve controller");
replacing a dead replica waits up to 0.4 s longer. The KubeRay manifest sets the same in its
pods."""


def start_ray(settings: Settings, num_cpus: int | None = None) -> None:
    """Start a local Ray (on loopback, on a port Ray picks) or join ``settings.ray_address``."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "namespace": NAMESPACE,
        "include_dashboard": False,
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
    }
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
    else:
        _stay_on_loopback()
        # Read by the controller's process, which inherits this one's environment.
        os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", SERVE_CONTROL_LOOP_SECONDS)
        # "local": a Ray of our own, even where another cluster was started on this machine
        # (without it, ray.init() joins the last one ``ray start`` recorded in /tmp/ray).
        # Its one node offers the placement resources the settings name (the pods' settings
        # in one process, as test_rayservice_app does): else no shard or replica would fit.
        wanted = (settings.shard_resource, settings.ingress_resource)
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            resources={name: 1 for name in wanted if name} or None,
            _node_ip_address="127.0.0.1",
            **kwargs,
        )


def _stay_on_loopback() -> None:
    """Keep a local Ray cluster on 127.0.0.1.

    Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the machine's interface address
    (``services.resolve_ip_for_localhost``) unless "cluster mode" is off, in which case it
    uses loopback. The switch is read from the environment by every Ray process it starts, and
    from ``ray_constants`` in this one (imported already, so set there too).
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def prepare_store(settings: Settings) -> Catalog:
    """Migrate the schema, seed the admin key, and load the config file's meters and plans
    into both environments."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    catalog = Catalog(engine)
    now = settings.clock()
    ensure_partitions(engine, now)
    if settings.admin_key:
        KeyStore(engine).seed_admin(settings.admin_key, now)
    if settings.config_path:
        seed_config(catalog, settings.config_path, now)
    return catalog


def settle_shards(settings: Settings, engine: Engine) -> Settings:
    """The settings with the shard count the database holds (stored at the first start;
    a different ``TALLYRAY_SHARDS`` later is logged and not applied: ``tallyray reshard``
    changes the count)."""
    count = settle_shard_count(engine, settings.shards, settings.clock())
    return replace(settings, shards=count)


def maintain_event_log(settings: Settings, engine: Engine) -> dict[str, Any]:
    """The event log's housekeeping, at start and every :data:`EVENT_LOG_MAINTENANCE_SECONDS`
    (``tallyray events maintain`` runs it once): this month's and the next month's partitions
    exist (PostgreSQL), and, with ``TALLYRAY_EVENT_RETENTION_DAYS`` set, events past the
    retention horizon are exported (with ``TALLYRAY_EVENT_EXPORT_DIR``) and removed."""
    now = settings.clock()
    created = ensure_partitions(engine, now)
    if created:
        log.info("event log partitions created: %s", ", ".join(created))
    retention: RetentionResult | None = None
    if settings.event_retention_days is not None:
        retention = apply_retention(
            engine,
            now,
            settings.event_retention_days,
            settings.grace_seconds,
            settings.event_export_dir,
        )
        if retention.refused:
            log.warning("event retention waits: %s", retention.refused)
        elif retention.removed:
            log.info("event retention", extra=retention.to_json())
    return {
        "partitions_created": created,
        "retention": None if retention is None else retention.to_json(),
    }


def read_config(
    path: str,
) -> tuple[dict[str, Any], list[tuple[CustomerRecord, str | None, frozenset[str]]]]:
    """A config file, validated whole: pricing, and the customers it lists (each with the
    plan to subscribe it to and the fields the file gives). Raises :class:`ConfigError`
    naming every problem."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidInput(f"cannot read configuration {path!r}: {error}") from None
    pricing = parse_config(raw)
    customers: list[tuple[CustomerRecord, str | None, frozenset[str]]] = []
    problems: list[Problem] = []
    entries = raw.get("customers", [])
    if not isinstance(entries, list):
        raise ConfigError.of([Problem("customers", "must be a list of customers")])
    allowed = CUSTOMER_FIELDS | {"plan"}
    for i, entry in enumerate(entries):
        where = f"customers[{i}]"
        if not isinstance(entry, dict):
            problems.append(Problem(where, "must be a JSON object"))
            continue
        problems += [Problem(f"{where}.{k}", "unknown field") for k in sorted(set(entry) - allowed)]
        plan = entry.get("plan")
        if plan is not None and plan not in pricing.plans:
            problems.append(Problem(f"{where}.plan", f"unknown plan {plan!r}"))
        elif plan is not None and pricing.plans[plan].currency.code != entry.get("currency"):
            problems.append(
                Problem(f"{where}.plan", f"plan {plan!r} is priced in another currency")
            )
        try:
            record = customer_from_json("test", {k: v for k, v in entry.items() if k != "plan"})
        except InvalidInput as error:
            problems += [Problem(f"{where}.{p.where}", p.message) for p in error.problems]
            continue
        customers.append((record, plan, frozenset(entry) - {"plan"}))
    for parse in (parse_invoicing_config, parse_tax_config):
        try:
            parse(raw.get("invoicing" if parse is parse_invoicing_config else "tax"))
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError.of(problems)
    return raw, customers


def billing_config(path: str | None) -> dict[str, Any]:
    """The parts of the config file invoicing needs (raw, validated at start)."""
    if not path:
        return {"invoicing": None, "tax": None, "rounding": None}
    raw, _ = read_config(path)
    return {
        "invoicing": raw.get("invoicing"),
        "tax": raw.get("tax"),
        "rounding": raw.get("rounding"),
    }


def seed_config(catalog: Catalog, path: str, now: int) -> None:
    """Load the config file's meters, plans and customers into both environments. Meters
    are immutable, plans get a new version when changed, customers are updated in the
    fields the file gives: what was set since over the API, the portal or a provider's
    webhook (a saved card's ``payment_method``, the customer's own spend cap) is kept across
    restarts."""
    raw, customers = read_config(path)
    for env in ENVIRONMENTS:
        for meter in raw.get("meters", []):
            catalog.add_meter(env, meter, now)
        for plan in raw.get("plans", []):
            catalog.add_plan(env, plan, now)
        for record, plan_key, fields in customers:
            saved = catalog.upsert_customer(replace(record, env=env), now, fields)
            if plan_key is not None and saved.plan_key != plan_key:
                catalog.subscribe(env, saved.id, plan_key, now, now)


def share_secrets(settings: Settings) -> Settings:
    """Settings whose processes will find their secrets: in a secrets file written for them
    (readable by this user only) unless the settings name one already. The caller removes it
    when the deployment stops (:func:`tallyray.credentials.remove_secrets_file`)."""
    if settings.secrets_file:
        return settings
    return replace(settings, secrets_file=write_secrets_file(settings.secret_values()))


def start_shards(settings: Settings) -> list[Any]:
    """Create (or find) the named shard actors and wait until each has recovered."""
    remote = cast(Any, ray.remote(ShardActor))
    handles = [
        remote.options(
            name=shard_name(i),
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=0,
            get_if_exists=True,
            **shard_options(settings),
        ).remote(
            i,
            settings.shard_count,
            None,  # the shard reads the database URL as a secret (tallyray.credentials)
            settings.checkpoint_seconds,
            settings.grace_seconds,
            settings.commit_gather_ms / 1000,
            settings.clock_offset_us,
            settings.limits,
            settings.secrets_file,
            settings.line_options,
        )
        for i in range(settings.shard_count)
    ]
    ray.get([cast(Any, h).ready.remote() for h in handles])
    return handles


def restart_shards(settings: Settings, old: int, new: int) -> list[Any]:
    """Stop the ``old`` named shard actors and start ``new`` ones (they recover from the
    checkpoints): the last step of a reshard."""
    _kill_named([shard_name(i) for i in range(old)])
    return start_shards(replace(settings, shards=new))


async def reshard_running(
    settings: Settings, engine: Engine, router: Any, count: int
) -> dict[str, Any]:
    """Reshard the deployment this ingress replica serves (``POST /v1/admin/reshard``)."""
    import asyncio

    from tallyray.cluster.reshard import reshard_live

    old = router.count
    handles = [router.handle(i) for i in range(old)]

    async def restart(new: int) -> list[Any]:
        return await asyncio.to_thread(restart_shards, settings, old, new)

    return await reshard_live(engine, handles, count, restart, settings.clock())


def _kill_named(names: list[str], wait_seconds: float = 30.0) -> None:
    """Kill these actors for good and wait until their names are free."""
    import time

    for name in names:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    deadline = time.monotonic() + wait_seconds
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.05)


def start_webhook_deliverer(settings: Settings) -> Any:
    """The one actor that fans the outbox out to webhook endpoints and delivers, retried."""
    return start_webhooks(
        None,  # read as a secret, like the shards'
        interval=1.0,
        delays=settings.webhook_retry_delays or None,
        clock_offset_us=settings.clock_offset_us,
        allow_private=settings.webhook_allow_private,
        secrets_file=settings.secrets_file,
    )


def start_ingress(settings: Settings) -> None:
    from tallyray.cluster.deployment import Ingress

    # No Serve proxy: each replica serves the API port itself (tallyray.serve.listener).
    serve.start(proxy_location="Disabled")
    shared = settings.shared()  # no secrets: Serve keeps its arguments in Ray's control store
    app = cast(Any, Ingress).options(**ingress_options(settings)).bind(shared)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def stop(settings: Settings) -> None:
    """Shut Tallyray down; its state is in the store, so nothing is lost.

    On a local Ray that Tallyray started, ``ray.shutdown()`` ends every actor at once (a
    graceful Serve shutdown waits on its controller for half a minute); on a shared cluster
    only Tallyray's app and shard actors are removed.
    """
    if not settings.ray_address:
        ray.shutdown()
        return
    try:
        serve.delete(APP_NAME)
    except Exception as error:  # noqa: BLE001 — removing the shards matters more
        log.warning("serve delete: %s", error)
    names = [shard_name(i) for i in range(settings.shard_count)]
    with contextlib.suppress(ValueError):  # a reshard may have made more since the start
        while True:
            ray.get_actor(shard_name(len(names)), namespace=NAMESPACE)
            names.append(shard_name(len(names)))
    for name in names + ["webhooks"]:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
