"""Alert rules as a service: a customer's own rules plus its plan's defaults, added and
removed through the API or the portal (the same rules, the same cap, the same audit).

A change is stored, then the shard that owns the customer reloads the customer's rules, so
the next batch is evaluated against them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from tallyray.actors.limits import MAX_ALERT_RULES_PER_CUSTOMER
from tallyray.pricing.alert_rules import AlertRule, parse_rule, plan_rules
from tallyray.storage.alerts import AlertStore
from tallyray.storage.audit import AuditEntry
from tallyray.storage.catalog import Catalog, new_id

__all__ = ["AlertRules"]


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
            meters = list(catalog.meters.meters)
            defaults = plan_rules(record.plan_key, raw.get("alerts", []), meters)
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
