"""Alert rules over the API (``/v1/customers/{id}/alert-rules``), and the service the portal
uses for the same: a customer's own rules plus its plan's default rules.

A change is stored, then the shard that owns the customer reloads the customer's rules, so
the next batch is evaluated against them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tallyray.actors.alerting import AlertRule, parse_rule, plan_rules
from tallyray.actors.limits import MAX_ALERT_RULES_PER_CUSTOMER
from tallyray.serve.auth import audit_entry
from tallyray.serve.http import json_body, json_response
from tallyray.storage.alerts import AlertStore
from tallyray.storage.audit import AuditEntry
from tallyray.storage.catalog import Catalog, new_id

__all__ = ["AlertRules", "add_alert_routes"]

Authenticate = Callable[[Request], Awaitable[str]]


@dataclass
class AlertRules:
    catalog: Catalog
    store: AlertStore
    router: Any
    clock: Callable[[], int]
    max_rules: int = MAX_ALERT_RULES_PER_CUSTOMER
    """A customer's own rules at most (its plan's defaults aside): the next one is a 409."""

    async def list(self, env: str, customer_id: str) -> list[dict[str, Any]]:
        """The customer's own rules, then its plan's defaults."""
        record = await run_in_threadpool(self.catalog.customer, env, customer_id)
        own = (await run_in_threadpool(self.store.rules, env, [customer_id])).get(customer_id, [])
        defaults: list[AlertRule] = []
        if record.plan_key is not None:
            catalog = await run_in_threadpool(self.catalog.env_catalog, env)
            raw = catalog.raw_plans.get((record.plan_key, record.plan_version or 0), {})
            defaults = plan_rules(record.plan_key, raw.get("alerts", []))
        return [r.to_json() for r in [*own, *defaults]]

    async def add(
        self, env: str, customer_id: str, doc: Any, audit: AuditEntry | None = None
    ) -> dict[str, Any]:
        await run_in_threadpool(self.catalog.customer, env, customer_id)  # 404 if unknown
        catalog = await run_in_threadpool(self.catalog.env_catalog, env)
        rule = parse_rule(doc, list(catalog.meters.meters), new_id("alr"))
        await run_in_threadpool(
            self.store.add_rule, env, customer_id, rule, self.clock(), self.max_rules, audit
        )
        await self._refresh(env, customer_id)
        return rule.to_json()

    async def delete(
        self, env: str, customer_id: str, rule_id: str, audit: AuditEntry | None = None
    ) -> None:
        await run_in_threadpool(self.store.delete_rule, env, customer_id, rule_id, audit)
        await self._refresh(env, customer_id)

    async def _refresh(self, env: str, customer_id: str) -> None:
        await self.router.call(self.router.index(env, customer_id), "refresh", env, [customer_id])


def add_alert_routes(app: FastAPI, rules: AlertRules, authenticate: Authenticate) -> None:
    @app.get("/v1/customers/{customer_id}/alert-rules", tags=["alerts"])
    async def get_alert_rules(customer_id: str, request: Request) -> Response:
        env = await authenticate(request)
        return json_response({"rules": await rules.list(env, customer_id)})

    @app.post("/v1/customers/{customer_id}/alert-rules", tags=["alerts"], status_code=201)
    async def post_alert_rule(customer_id: str, request: Request) -> Response:
        """`{"kind": "balance_below" | "spend_above" | "usage_above" |
        "credits_used_percent", "threshold": "10.00", "meter"?, "name"?}`: evaluated by the
        customer's shard on every batch; fires `alert.triggered` / `alert.recovered`."""
        env = await authenticate(request)
        doc = await json_body(request)
        summary = {"customer_id": customer_id, "rule": doc}
        entry = audit_entry(
            request, env, "alert_rule.created", "alert_rule", "", rules.clock(), summary
        )
        return json_response(await rules.add(env, customer_id, doc, entry), 201)

    @app.delete("/v1/customers/{customer_id}/alert-rules/{rule_id}", tags=["alerts"])
    async def delete_alert_rule(customer_id: str, rule_id: str, request: Request) -> Response:
        env = await authenticate(request)
        summary = {"customer_id": customer_id}
        entry = audit_entry(
            request, env, "alert_rule.deleted", "alert_rule", rule_id, rules.clock(), summary
        )
        await rules.delete(env, customer_id, rule_id, entry)
        return json_response({"deleted": rule_id})
