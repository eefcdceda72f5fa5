"""The HTTP API's routes, one module per resource group (each an ``APIRouter``):

- :mod:`.events` — ingest, and usage read back from the event log;
- :mod:`.quota` — quota checks and reservations (the gateway's calls);
- :mod:`.catalog` — meters, plans, customers, subscriptions, credits, the live balance;
- :mod:`.top_ups` — customers buying credit on their payment provider's page;
- :mod:`.plan_versions` — publishing and deleting draft plans, migrating subscribers;
- :mod:`.invoicing` — invoice runs, invoices, credit notes, exchange rates, payments;
- :mod:`.webhooks` — webhook endpoints and alert rules;
- :mod:`.payment_methods` — saved payment methods and auto-recharge;
- :mod:`.portal` — portal sessions and the portal's pages;
- :mod:`.simulations` — the pricing sandbox (simulations and their reports);
- :mod:`.operations` — liveness, metrics, API keys and the audit log.

They share :class:`tallyray.serve.api.Api` (found on the application's state) and the small
helpers of :mod:`tallyray.serve.http`; :func:`tallyray.serve.app.build_app` composes them.
"""

from fastapi import APIRouter

from tallyray.serve.routes import (
    catalog,
    events,
    invoicing,
    operations,
    payment_methods,
    plan_versions,
    portal,
    quota,
    simulations,
    top_ups,
    webhooks,
)

ROUTERS: tuple[APIRouter, ...] = (
    events.router,
    quota.router,
    catalog.router,
    top_ups.router,
    plan_versions.router,
    invoicing.router,
    webhooks.router,
    payment_methods.router,
    portal.router,
    simulations.router,
    operations.router,
)
"""Every route of the API, in the order the document lists them."""

__all__ = ["ROUTERS"]
