"""Simulations as the API runs them: check the request, store the job, drive its chunks as
Ray tasks (a few at a time) from this process, and write the summary when the last is done.

The process that drives a job says so on the job's row and beats a heartbeat while it works
(:mod:`tallyray.storage.leases`). If it stops, the job shows ``interrupted``; any process
may then resume it (:meth:`Simulations.resume`): it claims the job in one conditional
UPDATE and runs the chunks not stored yet. Nothing is resumed by itself when a server starts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from tallyray.clock import Clock
from tallyray.errors import Conflict, InvalidInput, Problem
from tallyray.invoicing.runs import RunSpec
from tallyray.invoicing.service import Billing
from tallyray.pricing.events import format_timestamp, parse_timestamp
from tallyray.simulation.compare import summarize
from tallyray.simulation.jobs import (
    CHUNK_SIZE,
    SimulationRequest,
    SimulationSpec,
    parse_request,
    simulate_chunk_task,
)
from tallyray.storage.leases import DRIVER_TIMEOUT_SECONDS, HEARTBEAT_SECONDS, process_driver
from tallyray.storage.simulations import LIVE, SimulationStore

__all__ = ["Simulations"]

log = logging.getLogger("tallyray.simulation")


class _Lost(Exception):
    """The job was taken over by another driver (or ended) while this one drove it."""


@dataclass
class Simulations:
    billing: Billing
    """Where the database, the invoicing and tax config and the clock come from."""
    chunk_size: int = CHUNK_SIZE
    clock: Clock | None = None
    """The time now (``None``: the billing's clock)."""
    driver: str = field(default_factory=process_driver)
    """This process's name on the jobs it drives (:mod:`tallyray.storage.leases`)."""
    store: SimulationStore = field(init=False)
    _jobs: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.store = SimulationStore(self.billing.catalog.engine)

    def now(self) -> int:
        return (self.clock or self.billing.clock)()

    async def get(self, env: str, sim_id: str) -> dict[str, Any]:
        """The job as it stands now (``interrupted`` when its driver stopped)."""
        return await run_in_threadpool(self.store.get, env, sim_id, self.now())

    async def create(self, env: str, doc: dict[str, Any]) -> SimulationSpec:
        """Check the request and store the job with its customers in chunks, driven by this
        process; returns what its chunks need. :meth:`start` then drives it."""
        catalog = self.billing.catalog
        now = self.now()
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
        size = self.chunk_size
        chunks = [customers[i : i + size] for i in range(0, len(customers), size)]
        sim_id = await run_in_threadpool(self.store.create, env, stored, chunks, now, self.driver)
        return self._spec(env, sim_id, stored)

    async def start(self, env: str, doc: dict[str, Any]) -> dict[str, Any]:
        spec = await self.create(env, doc)
        self._launch(spec)
        return await self.get(env, spec.simulation_id)

    async def resume(self, env: str, sim_id: str) -> dict[str, Any]:
        """Drive a failed or interrupted job to its end from here: its stored chunks are
        kept, the others are simulated. A succeeded job is answered as it is; a job another
        driver (or this process) still drives is a :class:`Conflict`."""
        job = await self.get(env, sim_id)
        task = self._jobs.get(sim_id)
        if job["state"] == "succeeded":
            return job
        if (task is not None and not task.done()) or job["state"] in LIVE:
            raise self._running(job)
        total, _ = await run_in_threadpool(self.store.chunks, sim_id)
        if not total and job["progress"]["customers"]:
            raise Conflict(
                f"simulation {sim_id} was started before simulations recorded their "
                "chunks (migration 0012) and cannot be resumed: start it again"
            )
        if not await run_in_threadpool(self.store.claim, env, sim_id, self.driver, self.now()):
            job = await self.get(env, sim_id)  # another driver was quicker
            if job["state"] == "succeeded":
                return job
            raise self._running(job)
        request = await run_in_threadpool(self.store.request, sim_id)
        self._launch(self._spec(env, sim_id, request))
        return await self.get(env, sim_id)

    @staticmethod
    def _running(job: dict[str, Any]) -> Conflict:
        return Conflict(
            f"simulation {job['id']} is running (its driver last reported at "
            f"{job['heartbeat_at']}): only a failed or interrupted simulation can be "
            f"resumed — one is interrupted when its driver has not reported for "
            f"{DRIVER_TIMEOUT_SECONDS} s; follow it at GET /v1/simulations/{job['id']}"
        )

    def _spec(self, env: str, sim_id: str, stored: dict[str, Any]) -> SimulationSpec:
        """What the job's chunks need, from its stored request (the same for a resumed
        job as for the one started)."""
        billing = self.billing
        end = parse_timestamp(stored["to"])
        ref = stored.get("plan_ref")
        return SimulationSpec(
            run=RunSpec(
                database_url=None if billing.secrets_file else billing.database_url,
                secrets_file=billing.secrets_file,
                env=env,
                run_id=None,
                until=end,
                finalize=False,
                invoicing=dict(billing.invoicing_raw or {}),
                tax=None if billing.tax_raw is None else dict(billing.tax_raw),
                rounding=billing.rounding,
            ),
            simulation_id=sim_id,
            plan=dict(stored["plan"]),
            plan_version=int(ref.rpartition("@")[2]) if ref else 0,
            start=parse_timestamp(stored["from"]),
            end=end,
        )

    def _launch(self, spec: SimulationSpec) -> None:
        sim_id = spec.simulation_id
        self._jobs[sim_id] = asyncio.get_running_loop().create_task(
            self._drive(spec), name=f"simulation-{sim_id}"
        )

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

    async def _beat(self, sim_id: str, **values: Any) -> None:
        """Say this process still drives the job; :class:`_Lost` when it no longer does."""
        if not await run_in_threadpool(
            lambda: self.store.beat(sim_id, self.driver, self.now(), **values)
        ):
            raise _Lost(sim_id)

    async def _drive(self, spec: SimulationSpec) -> None:
        """Run the job's chunks not done yet as Ray tasks, a few at a time, beating after
        each and every :data:`HEARTBEAT_SECONDS`; then the summary, from the stored rows."""
        sim_id = spec.simulation_id
        remote = simulate_chunk_task()
        gate = asyncio.Semaphore(self.billing.parallelism)

        async def one(seq: int, chunk: list[str]) -> None:
            async with gate:
                await remote.remote(spec, seq, chunk)
            await self._beat(sim_id)

        async def keep_beating() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS)
                await self._beat(sim_id)

        beating = asyncio.get_running_loop().create_task(keep_beating())
        work: asyncio.Future[list[None]] | None = None
        try:
            await self._beat(sim_id, state="running")
            _, chunks = await run_in_threadpool(self.store.chunks, sim_id)
            work = asyncio.gather(*(one(seq, c) for seq, c in chunks))
            either: list[asyncio.Future[Any]] = [work, beating]
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if beating in done:
                beating.result()  # raises what stopped it (_Lost)
            await work
            results = await run_in_threadpool(self.store.results, sim_id)
            summary = summarize(results)
            if not await run_in_threadpool(
                self.store.finish, sim_id, self.driver, summary, self.now()
            ):
                raise _Lost(sim_id)
        except _Lost:
            log.warning("simulation %s: another driver took it over; this one stops", sim_id)
        except Exception as error:  # noqa: BLE001 — the job's state must say it failed
            log.error("simulation %s failed: %s", sim_id, error)
            await run_in_threadpool(
                self.store.fail,
                sim_id,
                self.driver,
                f"simulation failed: {error}; resume it (POST /v1/simulations/{sim_id}/resume)",
                self.now(),
            )
        finally:
            beating.cancel()
            if work is not None and not work.done():
                work.cancel()

    async def wait(self, sim_id: str) -> None:
        """Wait for a simulation this process drives (tests)."""
        task = self._jobs.get(sim_id)
        if task is not None:
            await asyncio.shield(task)
