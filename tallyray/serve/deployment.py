"""The Ray Serve deployment that serves the HTTP API.

The FastAPI app is built inside each replica (``__serve_build_asgi_app__``), after the
replica has opened its own database engine and looked up the shard actors.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from tallyray.logs import configure_logging
from tallyray.serve.app import Services, build_app
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import ShardRouter
from tallyray.storage.catalog import Catalog
from tallyray.storage.db import make_engine


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    def __init__(self, settings: dict[str, Any]) -> None:
        configure_logging()
        self.services = Services(
            catalog=Catalog(make_engine(settings["database_url"])),
            router=ShardRouter(settings["shards"]),
            rules=IntakeRules(grace_seconds=settings["grace_seconds"]),
            auto_create_customers=settings["auto_create_customers"],
            default_currency=settings["default_currency"],
        )

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(self.services)
