"""The pricing sandbox's routes: start a simulation, follow it, read its result as JSON, CSV
or an HTML report. The work is :class:`tallyray.simulation.service.Simulations`'."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tallyray.serve.api import api_of
from tallyray.serve.http import json_response, object_body
from tallyray.simulation.jobs import FIELDS
from tallyray.simulation.report import render_csv, render_html
from tallyray.simulation.service import Simulations

__all__ = ["router", "simulations_of"]

router = APIRouter(tags=["simulations"])


def simulations_of(request: Request) -> Simulations:
    """The application's simulations (made on first use, beside its invoicing)."""
    state = request.app.state
    found: Simulations | None = getattr(state, "simulations", None)
    if found is None:
        found = state.simulations = Simulations(api_of(request).billing)
    return found


@router.post("/v1/simulations", status_code=202)
async def post_simulation(request: Request) -> Response:
    """Replay the stored events of the periods that end in (`from`, `to`] under a plan (a
    draft plan's JSON, or `"key@version"` of a stored one), for the customers named or for
    every subscriber of a plan, and compare with what they pay. Runs as a job: follow it at
    `GET /v1/simulations/{id}`."""
    api = api_of(request)
    env = await api.authenticate(request)
    doc = await object_body(request, FIELDS)
    return json_response(await simulations_of(request).start(env, doc), 202)


@router.get("/v1/simulations/{simulation_id}")
async def get_simulation(simulation_id: str, request: Request) -> Response:
    """The job's state, progress, errors and (once it has succeeded) its summary. A job whose
    driving process stopped reporting is `interrupted`: resume it."""
    env = await api_of(request).authenticate(request)
    return json_response(await simulations_of(request).get(env, simulation_id))


@router.post("/v1/simulations/{simulation_id}/resume", status_code=202)
async def resume_simulation(simulation_id: str, request: Request) -> Response:
    """Finish an `interrupted` or `failed` job from this process: the customers already
    simulated are kept, the others are simulated. A `succeeded` job is answered as it is; a
    job still running is a 409."""
    env = await api_of(request).authenticate(request)
    return json_response(await simulations_of(request).resume(env, simulation_id), 202)


@router.get("/v1/simulations/{simulation_id}/results")
async def get_simulation_results(simulation_id: str, request: Request) -> Response:
    """Every customer's comparison, line by line."""
    env = await api_of(request).authenticate(request)
    sims = simulations_of(request)
    store = sims.store
    await sims.get(env, simulation_id)  # 404 if not ours
    return json_response({"results": await run_in_threadpool(store.results, simulation_id)})


@router.get("/v1/simulations/{simulation_id}/result.csv")
async def get_simulation_csv(simulation_id: str, request: Request) -> Response:
    env = await api_of(request).authenticate(request)
    sims = simulations_of(request)
    store = sims.store
    await sims.get(env, simulation_id)
    results = await run_in_threadpool(store.results, simulation_id)
    return Response(
        render_csv(results),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{simulation_id}.csv"'},
    )


@router.get("/v1/simulations/{simulation_id}/report.html")
async def get_simulation_report(simulation_id: str, request: Request) -> Response:
    env = await api_of(request).authenticate(request)
    sims = simulations_of(request)
    store = sims.store
    simulation = await sims.get(env, simulation_id)
    results = await run_in_threadpool(store.results, simulation_id)
    return HTMLResponse(render_html(simulation, results))
