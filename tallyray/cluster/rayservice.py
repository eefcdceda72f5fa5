"""The Serve application a KubeRay ``RayService`` deploys (``deploy/kuberay/``).

On Kubernetes, KubeRay starts the Ray cluster and hands Serve the application named by
``import_path: tallyray.cluster.rayservice:app`` in the RayService's ``serveConfigV2``; nobody
runs ``tallyray serve``. Serve calls :func:`app` in a Ray task on the cluster, which does what
``tallyray serve`` does before it deploys the ingress: migrate the schema and seed the admin
key and the config file, then create (or find) the named shard actors and the webhook
deliverer. It returns the ingress, which Serve deploys.

Settings come from the pod's environment, exactly as for ``tallyray serve`` (the secrets from
Kubernetes Secrets through ``TALLYRAY_*`` or ``TALLYRAY_*_FILE``): every pod of the cluster
needs the same variables, since the shards and the replicas read their secrets where they run.
Nothing here is stopped when the app is deleted: the shards are detached actors whose state is
in the database.
"""

from __future__ import annotations

from typing import Any, cast

from tallyray.cluster.placement import ingress_options
from tallyray.cluster.providers import check_payment_settings
from tallyray.cluster.settings import Settings
from tallyray.cluster.wiring import (
    maintain_event_log,
    prepare_store,
    settle_shards,
    start_shards,
    start_webhook_deliverer,
)

__all__ = ["IMPORT_PATH", "app"]

#: What a ``serveConfigV2`` names to deploy Tallyray.
IMPORT_PATH = "tallyray.cluster.rayservice:app"


def app(args: dict[str, Any] | None = None) -> Any:
    """Serve's application builder. ``args`` (the config's ``args:``) is not used: settings
    are read from the environment, where Kubernetes puts them."""
    from tallyray.cluster.deployment import Ingress

    settings = Settings.load()
    check_payment_settings(settings)  # as `tallyray serve`: a test key must not go live
    catalog = prepare_store(settings)
    settings = settle_shards(settings, catalog.engine)  # the count the database holds
    # Partitions of this month and the next, retention once; nothing here runs hourly as
    # `tallyray serve` does: schedule `tallyray events maintain` (docs/server.md).
    maintain_event_log(settings, catalog.engine)
    start_shards(settings)
    start_webhook_deliverer(settings)
    return cast(Any, Ingress).options(**ingress_options(settings)).bind(settings.shared())
