"""Simulations as the API runs them: check the request, store the job, drive its chunks as
Ray tasks (a few at a time) from this process, and write the summary when the last is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from tallyray.errors import InvalidInput, Problem
from tallyray.invoicing.runs import RunSpec
from tallyray.invoicing.service import Billing
from tallyray.pricing.events import format_timestamp
from tallyray.simulation.compare import summarize
from tallyray.simulation.jobs import (
    CHUNK_SIZE,
    SimulationRequest,
    SimulationSpec,
    parse_request,
    simulate_chunk_task,
)
from tallyray.storage.simulations import SimulationStore

__all__ = ["Simulations"]

log = logging.getLogger("tallyray.simulation")


@dataclass
class Simulations:
    billing: Billing
    """Where the database, the invoicing and tax config and the clock come from."""
    chunk_size: int = CHUNK_SIZE
    store: SimulationStore = field(init=False)
    _jobs: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.store = SimulationStore(self.billing.catalog.engine)

    async def start(self, env: str, doc: dict[str, Any]) -> dict[str, Any]:
        catalog = self.billing.catalog
        now = self.billing.clock()
        env_catalog = await run_in_threadpool(catalog.env_catalog, env)
        request = parse_request(doc, env_catalog, now)
        customers = await run_in_threadpool(self._customers, env, request)
        stored = {
            "plan": dict(request.definition),
            "plan_ref": request.plan_ref,
            "from": format_timestamp(request.start),
            "to": format_timestamp(request.end),
            "customers": None if request.customers is None else len(request.customers),
            "subscribers_of": request.subscribers_of,
        }
        sim_id = await run_in_threadpool(self.store.create, env, stored, len(customers), now)
        billing = self.billing
        spec = SimulationSpec(
            run=RunSpec(
                database_url=None if billing.secrets_file else billing.database_url,
                secrets_file=billing.secrets_file,
                env=env,
                run_id=None,
                until=request.end,
                finalize=False,
                invoicing=dict(billing.invoicing_raw or {}),
                tax=None if billing.tax_raw is None else dict(billing.tax_raw),
                rounding=billing.rounding,
            ),
            simulation_id=sim_id,
            plan=dict(request.definition),
            plan_version=request.plan_version,
            start=request.start,
            end=request.end,
        )
        size = self.chunk_size
        chunks = [customers[i : i + size] for i in range(0, len(customers), size)]
        self._jobs[sim_id] = asyncio.get_running_loop().create_task(
            self._drive(spec, chunks), name=f"simulation-{sim_id}"
        )
        return await run_in_threadpool(self.store.get, env, sim_id)

    def _customers(self, env: str, request: SimulationRequest) -> list[str]:
        """The customers to simulate: the ones named (all must exist), or every customer
        with a subscription to the plan that overlaps the range."""
        catalog = self.billing.catalog
        if request.customers is not None:
            found = catalog.customers(env, request.customers)
            missing = [c for c in request.customers if c not in found]
            if missing:
                raise InvalidInput(
                    f"no customer {missing[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    [Problem("customers", f"no customer {c!r}") for c in missing[:100]],
                )
            return list(request.customers)
        found_subs = catalog.subscriptions(env, None, before=request.end)
        return sorted(
            customer
            for customer, subs in found_subs.items()
            if any(
                s["plan_key"] == request.subscribers_of
                and (s.get("end") is None or s["end"] > request.start)
                for s in subs
            )
        )

    async def _drive(self, spec: SimulationSpec, chunks: Sequence[list[str]]) -> None:
        sim_id = spec.simulation_id
        remote = simulate_chunk_task()
        gate = asyncio.Semaphore(self.billing.parallelism)

        async def one(chunk: list[str]) -> None:
            async with gate:
                await remote.remote(spec, chunk)

        try:
            await run_in_threadpool(self.store.update, sim_id, state="running")
            await asyncio.gather(*(one(c) for c in chunks))
            results = await run_in_threadpool(self.store.results, sim_id)
            summary = summarize(results)
            await run_in_threadpool(
                self.store.update,
                sim_id,
                state="succeeded",
                summary=summary,
                finished_at=self.billing.clock(),
            )
        except Exception as error:  # noqa: BLE001 — the job's state must say it failed
            log.error("simulation %s failed: %s", sim_id, error)
            await run_in_threadpool(
                self.store.add_results,
                sim_id,
                [],
                0,
                [{"customer_id": None, "message": f"simulation failed: {error}"}],
            )
            await run_in_threadpool(
                self.store.update, sim_id, state="failed", finished_at=self.billing.clock()
            )

    async def wait(self, sim_id: str) -> None:
        """Wait for a simulation this process drives (tests)."""
        task = self._jobs.get(sim_id)
        if task is not None:
            await asyncio.shield(task)
