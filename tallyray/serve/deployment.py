"""The Ray Serve deployment that serves the HTTP API.

The FastAPI app is built inside each replica (``__serve_build_asgi_app__``), after the
replica has opened its own database engine and looked up the shard actors.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from tallyray.cluster.settings import Settings
from tallyray.cluster.wiring import billing_config, payment_providers
from tallyray.invoicing.service import Billing
from tallyray.logs import configure_logging
from tallyray.serve.app import Services, build_app, now_us
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import ShardRouter
from tallyray.storage.billing import BillingStore
from tallyray.storage.catalog import Catalog
from tallyray.storage.db import make_engine


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    def __init__(self, settings: dict[str, Any]) -> None:
        configure_logging()
        engine = make_engine(settings["database_url"])
        catalog = Catalog(engine)
        router = ShardRouter(settings["shards"])
        config = billing_config(settings["config_path"])
        billing = Billing(
            catalog=catalog,
            store=BillingStore(engine),
            database_url=settings["database_url"],
            router=router,
            invoicing_raw=config["invoicing"],
            tax_raw=config["tax"],
            rounding=config["rounding"],
            grace_seconds=settings["grace_seconds"],
            providers=payment_providers(Settings(**settings)),
            clock=now_us,
        )
        self.services = Services(
            catalog=catalog,
            router=router,
            rules=IntakeRules(grace_seconds=settings["grace_seconds"]),
            auto_create_customers=settings["auto_create_customers"],
            default_currency=settings["default_currency"],
            billing=billing,
            dunning_seconds=settings["dunning_seconds"],
        )

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(self.services)
