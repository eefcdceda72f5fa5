"""The Ray Serve deployment that serves the HTTP API.

Each replica opens its own database engine, finds the shard actors, builds the FastAPI app
and serves it on the API port itself (:mod:`tallyray.serve.listener`); Serve places the
replicas, checks their health (which includes the listener's) and restarts them.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from tallyray.cluster.providers import payment_providers
from tallyray.cluster.settings import Settings
from tallyray.cluster.wiring import billing_config, reshard_running
from tallyray.heap import freeze_startup_heap
from tallyray.invoicing.service import Billing
from tallyray.logs import configure_logging
from tallyray.serve.api import Services
from tallyray.serve.app import build_app
from tallyray.serve.auth import RateLimit
from tallyray.serve.intake import IntakeRules
from tallyray.serve.listener import ApiListener
from tallyray.serve.shards import ShardRouter
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog
from tallyray.storage.db import make_engine
from tallyray.storage.layout import layout_reader

log = logging.getLogger("tallyray.cluster")


@serve.deployment(health_check_period_s=5, health_check_timeout_s=10)
class Ingress:
    def __init__(self, shared: dict[str, Any]) -> None:
        """``shared``: the deployment's settings without its secrets, which this replica
        reads from its environment or the secrets file (:meth:`Settings.from_shared`)."""
        configure_logging()
        settings = Settings.from_shared(shared)
        clock = settings.clock
        engine = make_engine(settings.database_url)
        catalog = Catalog(engine)
        router = ShardRouter(
            settings.shard_count,
            line_options=settings.line_options,
            layout=layout_reader(engine),
        )
        router.relayout()  # the stored count: a reshard may have run since the start
        config = billing_config(settings.config_path)
        billing = Billing(
            catalog=catalog,
            store=BillingStore(engine),
            database_url=settings.database_url,
            secrets_file=settings.secrets_file,
            router=router,
            invoicing_raw=config["invoicing"],
            tax_raw=config["tax"],
            rounding=config["rounding"],
            grace_seconds=settings.grace_seconds,
            providers=payment_providers(settings),
            clock=clock,
        )
        self.services = Services(
            catalog=catalog,
            router=router,
            rules=IntakeRules(grace_seconds=settings.grace_seconds),
            auto_create_customers=settings.auto_create_customers,
            default_currency=settings.default_currency,
            billing=billing,
            dunning_seconds=settings.dunning_seconds,
            recharge_seconds=settings.recharge_seconds or None,
            run_schedule=settings.run_schedule,
            clock=clock,
            rate_limit=RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst),
            portal_rate_limit=RateLimit(
                settings.portal_rate_limit_per_second, settings.portal_rate_limit_burst
            ),
            key_cache_seconds=settings.key_cache_seconds,
            customer_cache_size=settings.customer_cache_size,
            public_docs=settings.public_docs,
            webhook_allow_private=settings.webhook_allow_private,
            limits=settings.limits,
            reshard=lambda count: reshard_running(settings, engine, router, count),
        )
        app = build_app(self.services)
        freeze_startup_heap()
        # Bound only now: from the moment the socket listens, the kernel hands it connections.
        self.listener = ApiListener(app, settings.host, settings.port, settings.access_log)
        self.listener.start()
        self.listener.wait_started()

    def check_health(self) -> None:
        """Serve's periodic probe: a replica whose listener has stopped gets replaced."""
        if not self.listener.alive():
            raise RuntimeError(f"the API listener stopped: {self.listener.failure!r}")
        router = self.services.router
        try:
            if router.epoch != layout_reader(self.services.catalog.engine)()[1]:
                router.relayout()  # another replica resharded: route by the new count
        except Exception:  # noqa: BLE001 — the store's health is not the replica's
            log.warning("could not read the shard layout", exc_info=True)

    def __del__(self) -> None:
        listener = getattr(self, "listener", None)
        if listener is not None:
            listener.stop()
