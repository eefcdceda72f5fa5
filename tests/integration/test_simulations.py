"""The pricing sandbox end to end, on each store: events → simulation under a draft plan →
its result, checked to the minor unit against invoices built the normal way.

A customer on ``pro`` (the example config) and a twin on a copy of each draft send the same
October; the twin's invoice is what the simulation must find for the customer under the
draft, line by line.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
import test_invoicing
from suite_clock import CLOCK
from support import unique
from test_invoicing import NOV_1, OCT_1, Invoicing, amounts

from tallyray.errors import Conflict
from tallyray.simulation.jobs import simulate_chunk
from tallyray.simulation.service import Simulations
from tallyray.storage.leases import DRIVER_TIMEOUT_SECONDS

pytestmark = pytest.mark.anyio

inv = test_invoicing.inv
"""The fixture: a fresh store and shard per test, invoicing from a German seller."""

CALL = {"model": "gpt-4o", "input_tokens": 1_000_000, "output_tokens": 200_000}
SEATS = 12

# pro in October, for 3 calls and 12 seats:
#   base fee                                        49.00
#   gpt-4o input   3,000,000 × 0.0000025          =  7.50
#   gpt-4o output    600,000 × 0.00001            =  6.00
#   gpt-4o-mini input and output: nothing           0.00 + 0.00
#   requests       3 → 1 package × 2.00           =  2.00
#   seats          12 → volume tier 11–50 × 12.00 = 144.00
#   subtotal (over the 100.00 minimum)              208.50
ACTUAL = "208.50"


async def _pro() -> dict[str, Any]:
    path = Path(__file__).resolve().parents[2] / "examples" / "llm-api" / "tallyray.json"
    (plan,) = [p for p in json.loads(path.read_text())["plans"] if p["key"] == "pro"]
    return dict(plan)


def cheaper_tier(plan: dict[str, Any]) -> None:
    # seats 11–50 at 9.00: 12 × 9.00 = 108.00 → 208.50 − 36.00 = 172.50
    (seats,) = [c for c in plan["charges"] if c["meter"] == "seats"]
    seats["tiers"][1]["unit_amount"] = "9.00"


def new_charge(plan: dict[str, Any]) -> None:
    # requests also at 0.50 each: 3 × 0.50 = 1.50 → 210.00
    plan["charges"].append(
        {"meter": "requests", "model": "per_unit", "unit_amount": "0.50",
         "description": "Requests"}
    )  # fmt: skip


def higher_minimum(plan: dict[str, Any]) -> None:
    # minimum 250.00: a true-up of 250.00 − 208.50 = 41.50
    plan["minimum"] = "250.00"


DRAFTS = [
    pytest.param(cheaper_tier, "172.50", "-36.00", id="cheaper-tier"),
    pytest.param(new_charge, "210.00", "1.50", id="new-charge"),
    pytest.param(higher_minimum, "250.00", "41.50", id="higher-minimum"),
]


async def _customer(inv: Invoicing, plan: str) -> str:
    customer = unique("cust")
    r = await inv.client.post(
        "/v1/customers",
        json={"id": customer, "currency": "EUR", "name": "Acme", "country": "DE"},
    )
    assert r.status_code == 201, r.text
    r = await inv.client.post(
        "/v1/subscriptions", json={"customer_id": customer, "plan": plan, "start": OCT_1}
    )
    assert r.status_code == 201, r.text
    events = [
        {"id": unique("evt"), "customer_id": customer, "type": "llm.completion",
         "timestamp": f"2026-10-{10 + i}T12:00:00Z", "properties": CALL}
        for i in range(3)
    ] + [
        {"id": unique("evt"), "customer_id": customer, "type": "seat.active",
         "timestamp": "2026-10-20T09:00:00Z", "properties": {"user_id": f"user{n}"}}
        for n in range(SEATS)
    ]  # fmt: skip
    r = await inv.client.post("/v1/events", json=events)
    assert r.status_code == 200, r.text
    return customer


async def simulate(inv: Invoicing, body: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    r = await inv.client.post("/v1/simulations", json={"from": OCT_1, "to": NOV_1, **body})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("pending", "running")
    return await until_done(inv, job["id"])


def simulations_of_app(inv: Invoicing) -> Simulations:
    """The app's simulations service (the one the routes made; made here if no route has
    yet)."""
    state = inv.client._transport.app.state  # type: ignore[attr-defined]
    if getattr(state, "simulations", None) is None:
        state.simulations = Simulations(inv.billing)
    found: Simulations = state.simulations
    return found


async def until_done(inv: Invoicing, job_id: str) -> tuple[dict[str, Any], list[Any]]:
    """Wait for the job wherever it is driven in this test, and read it and its results."""
    await simulations_of_app(inv).wait(job_id)
    r = await inv.client.get(f"/v1/simulations/{job_id}")
    assert r.status_code == 200, r.text
    job = r.json()
    r = await inv.client.get(f"/v1/simulations/{job_id}/results")
    assert r.status_code == 200, r.text
    return job, list(r.json()["results"])


@pytest.mark.parametrize(("change", "total", "difference"), DRAFTS)
async def test_a_draft_gives_what_an_invoice_under_it_says_to_the_minor_unit(
    inv: Invoicing, change: Any, total: str, difference: str
) -> None:
    draft = await _pro()
    change(draft)
    twin_plan = {**copy.deepcopy(draft), "key": unique("pro_draft")}
    r = await inv.client.post("/v1/plans", json=twin_plan)
    assert r.status_code == 201, r.text
    customer = await _customer(inv, "pro")
    twin = await _customer(inv, twin_plan["key"])

    # Before any invoice: "actual" is what the invoice run would compute.
    job, (before,) = await simulate(inv, {"plan": draft, "customers": [customer]})
    assert job["state"] == "succeeded", job
    assert job["progress"] == {"customers": 1, "done": 1}
    assert [p["actual_source"] for p in before["periods"]] == ["computed"]
    assert before["total"] == {"actual": ACTUAL, "simulated": total, "difference": difference}

    run = await inv.run()
    assert run["status"] == "succeeded", run
    (invoice,) = await inv.invoices(customer)
    (twin_invoice,) = await inv.invoices(twin)
    assert invoice["subtotal"] == ACTUAL

    # After the run: "actual" is the invoice; the simulation finds the twin's invoice.
    job, (after,) = await simulate(inv, {"plan": draft, "subscribers_of": "pro"})
    assert job["state"] == "succeeded", job
    assert [p["actual_source"] for p in after["periods"]] == ["invoice"]
    assert after["periods"][0]["invoice_id"] == invoice["id"]
    assert after["total"] == before["total"]
    simulated = {line["description"]: line["simulated"] for line in after["lines"]}
    actual = {line["description"]: line["actual"] for line in after["lines"]}
    assert {d: a for d, a in simulated.items() if d in amounts(twin_invoice)} == amounts(
        twin_invoice
    )
    assert {d: a for d, a in actual.items() if d in amounts(invoice)} == amounts(invoice)
    assert after["total"]["simulated"] == twin_invoice["subtotal"]

    summary = job["summary"]["currencies"]["EUR"]
    assert summary["customers"] == 1
    assert summary["revenue"] == {"actual": ACTUAL, "simulated": total, "difference": difference}
    more = difference[0] != "-"
    assert (summary["pay_more"], summary["pay_less"], summary["pay_same"]) == (
        (1, 0, 0) if more else (0, 1, 0)
    )
    assert summary["percentiles"]["p50"] == difference


async def test_a_stored_plan_by_key_and_version_and_the_csv_and_html_report(
    inv: Invoicing,
) -> None:
    first = await _customer(inv, "pro")  # on pro version 1
    second = await _customer(inv, "pro")
    draft = await _pro()
    higher_minimum(draft)
    r = await inv.client.post("/v1/plans", json=draft)  # pro version 2
    assert r.status_code == 201, r.text
    job, results = await simulate(inv, {"plan": "pro@2", "customers": [first, second]})
    assert job["state"] == "succeeded" and job["plan"] == "pro@2"
    assert [r["total"]["difference"] for r in results] == ["41.50", "41.50"]

    r = await inv.client.get(f"/v1/simulations/{job['id']}/result.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["customer_id"] for row in rows] == sorted([first, second])
    assert rows[0]["actual_total"] == ACTUAL
    assert rows[0]["simulated_total"] == "250.00"
    assert rows[0]["difference"] == "41.50"
    assert rows[0]["percent_change"] == "19.90"  # 41.50 / 208.50 = 19.904…%
    assert rows[0]["actual_minimum"] == "0" and rows[0]["simulated_minimum"] == "41.50"
    assert rows[0]["actual: Seats"] == "144.00"

    r = await inv.client.get(f"/v1/simulations/{job['id']}/report.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<svg" in html and "Distribution of changes" in html
    assert first in html and "41.50" in html and "417.00" in html  # 2 × 208.50


async def test_a_stored_draft_is_simulated_by_key_and_version_before_anyone_can_subscribe(
    inv: Invoicing,
) -> None:
    customer = await _customer(inv, "pro")  # on pro version 1
    draft = await _pro()
    cheaper_tier(draft)
    r = await inv.client.post("/v1/plans", json={**draft, "draft": True})
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    assert r.json()["status"] == "draft"

    job, (result,) = await simulate(inv, {"plan": f"pro@{version}", "customers": [customer]})
    assert job["state"] == "succeeded", job
    assert result["total"] == {"actual": ACTUAL, "simulated": "172.50", "difference": "-36.00"}

    # the draft prices simulations only: a new subscriber still gets the published version
    newcomer = await _customer(inv, "pro")
    r = await inv.client.get("/v1/subscriptions", params={"customer_id": newcomer})
    assert r.status_code == 200, r.text
    assert [s["plan_version"] for s in r.json()["subscriptions"]] == [version - 1]


async def test_a_customer_without_a_period_in_the_range_is_reported_not_simulated(
    inv: Invoicing,
) -> None:
    lonely = unique("cust")
    r = await inv.client.post("/v1/customers", json={"id": lonely, "currency": "EUR"})
    assert r.status_code == 201, r.text
    job, results = await simulate(inv, {"plan": "pro", "customers": [lonely]})
    assert job["state"] == "succeeded"
    assert results == []
    assert job["errors"][0]["customer_id"] == lonely
    assert "billing period" in job["errors"][0]["message"]


BAD = [
    pytest.param({"from": OCT_1, "to": NOV_1, "customers": ["x"]}, "plan", "required",
                 id="no-plan"),
    pytest.param({"plan": "nope@1", "from": OCT_1, "to": NOV_1, "customers": ["x"]}, "plan",
                 "no plan 'nope'", id="unknown-plan"),
    pytest.param({"plan": "pro@two", "from": OCT_1, "to": NOV_1, "customers": ["x"]}, "plan",
                 "whole number", id="bad-version"),
    pytest.param({"plan": {"key": "d", "name": "D", "currency": "EUR", "interval": "month",
                           "charges": [{"meter": "nope", "model": "per_unit",
                                        "unit_amount": "1"}]},
                  "from": OCT_1, "to": NOV_1, "customers": ["x"]}, "plan.", "nope",
                 id="bad-draft"),
    pytest.param({"plan": "pro", "from": NOV_1, "to": OCT_1, "customers": ["x"]}, "to",
                 "after 'from'", id="backwards"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": "2030-01-01T00:00:00Z",
                  "customers": ["x"]}, "to", "future", id="future"),
    pytest.param({"plan": "pro", "from": "yesterday", "to": NOV_1, "customers": ["x"]},
                 "from", "RFC 3339 time", id="bad-time"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": NOV_1}, "customers", "either",
                 id="nobody"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": NOV_1, "customers": ["x"],
                  "subscribers_of": "pro"}, "customers", "either", id="both"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": NOV_1, "customers": []}, "customers",
                 "non-empty", id="empty-list"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": NOV_1, "subscribers_of": "gold"},
                 "subscribers_of", "no plan 'gold'", id="unknown-subscribers-of"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": NOV_1, "customers": ["ghost"]},
                 "customers", "no customer 'ghost'", id="unknown-customer"),
    pytest.param({"plan": "pro", "from": OCT_1, "to": NOV_1, "customers": ["x"], "x": 1},
                 "x", "unknown field", id="unknown-field"),
]  # fmt: skip


async def test_a_bad_request_is_a_422_that_says_what_to_fix(inv: Invoicing) -> None:
    """Each of :data:`BAD` on one store and shard (a refused request writes nothing: a fresh
    store for each would only add its start)."""
    for case in BAD:
        body, where, says = case.values
        r = await inv.client.post("/v1/simulations", json=body)
        assert r.status_code == 422, (case.id, r.text)
        error = r.json()["error"]
        assert any(d["where"].startswith(str(where)) for d in error["details"]), (case.id, error)
        assert str(says) in json.dumps(error), (case.id, error)


async def test_an_unknown_simulation_is_a_404(inv: Invoicing) -> None:
    for path in ("", "/results", "/result.csv", "/report.html"):
        r = await inv.client.get(f"/v1/simulations/sim_nope{path}")
        assert r.status_code == 404, (path, r.text)


async def test_the_cli_follows_the_job_and_prints_a_table(
    inv: Invoicing, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import tallyray.cli as cli

    customer = await _customer(inv, "pro")
    draft = await _pro()
    cheaper_tier(draft)
    (tmp_path / "draft.json").write_text(json.dumps(draft))

    async def call(method: str, path: str, body: Any) -> Any:
        r = await inv.client.request(method, path, json=body)
        assert r.status_code < 300, r.text
        return r.json()

    def api(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
        return anyio.from_thread.run(call, method, path, body)

    monkeypatch.setattr(cli, "_api", api)
    args = ["simulate", "--plan", str(tmp_path / "draft.json"), "--from", "2026-10-01",
            "--to", "2026-11-01", "--customers", customer, "--key", "k"]  # fmt: skip
    code = await anyio.to_thread.run_sync(cli.main, args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "revenue before" in out
    table = [line.split() for line in out.splitlines() if line.startswith(customer)]
    assert table == [[customer, "EUR", ACTUAL, "172.50", "-36.00", "-17.27%"]]

    # --resume follows a job by its id (this one succeeded: answered as it is)
    (sim_id,) = {word.split("/")[-2] for word in out.split() if word.endswith("/result.csv")}
    code = await anyio.to_thread.run_sync(cli.main, ["simulate", "--resume", sim_id, "--key", "k"])
    resumed = capsys.readouterr().out
    assert code == 0, resumed
    assert [line.split() for line in resumed.splitlines() if line.startswith(customer)] == table

    code = await anyio.to_thread.run_sync(
        cli.main, [*args[:2], str(tmp_path / "missing.json"), *args[3:]]
    )
    assert code == 2
    assert "no such file" in capsys.readouterr().err


# -- a job whose driver stopped --------------------------------------------------------------

GONE = DRIVER_TIMEOUT_SECONDS + 1
"""Seconds before now that a gone driver last reported: just past the limit."""


def replica(inv: Invoicing, name: str, *, silent_for: int = 0) -> Simulations:
    """Another API process on the same store, cutting jobs into chunks of one customer. Its
    clock runs ``silent_for`` seconds behind the suite's: what it writes is as old as the
    last word of a driver that went silent that long ago."""
    return Simulations(
        inv.billing,
        chunk_size=1,
        clock=lambda: CLOCK() - silent_for * 1_000_000,
        driver=f"replica-{name}",
    )


async def sandbox_customers(inv: Invoicing) -> dict[str, Any]:
    """Two customers on pro and one without a period (an error): three chunks of one."""
    first = await _customer(inv, "pro")
    second = await _customer(inv, "pro")
    lonely = unique("cust")
    r = await inv.client.post("/v1/customers", json={"id": lonely, "currency": "EUR"})
    assert r.status_code == 201, r.text
    draft = await _pro()
    cheaper_tier(draft)
    return {"plan": draft, "customers": [first, lonely, second]}


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    """What a job's answer says about its work (not its id or times)."""
    return {k: job[k] for k in ("state", "progress", "errors", "summary")}


@pytest.mark.parametrize("stopped", ["interrupted", "failed"])
async def test_a_job_whose_driver_stopped_says_so_and_resumes_to_the_same_result(
    inv: Invoicing, stopped: str
) -> None:
    body = await sandbox_customers(inv)
    expected, expected_results = await simulate(inv, body)  # one driver, never stopped
    assert expected["state"] == "succeeded", expected
    assert [r["total"]["difference"] for r in expected_results] == ["-36.00", "-36.00"]

    # The state a driver leaves behind when it stops after its first chunk (which Ray ran
    # twice): either silently (its process went away), or saying it failed.
    gone = replica(inv, "a", silent_for=GONE if stopped == "interrupted" else 0)
    spec = await gone.create("test", {"from": OCT_1, "to": NOV_1, **body})
    sim_id = spec.simulation_id
    assert gone.store.beat(sim_id, gone.driver, gone.now(), state="running")
    first_chunk = body["customers"][:1]
    assert simulate_chunk(spec, 0, first_chunk)["stored"] is True
    assert simulate_chunk(spec, 0, first_chunk)["stored"] is False  # the retry stores nothing
    if stopped == "failed":
        assert gone.store.fail(sim_id, gone.driver, "simulation failed: boom", gone.now())

    r = await inv.client.get(f"/v1/simulations/{sim_id}")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == stopped, job
    assert job["progress"] == {"customers": 3, "done": 1}

    r = await inv.client.post(f"/v1/simulations/{sim_id}/resume")
    assert r.status_code == 202, r.text
    assert r.json()["state"] in ("running", "succeeded")
    job, results = await until_done(inv, sim_id)
    assert comparable(job) == comparable(expected)
    assert results == expected_results

    # resuming a job that succeeded answers it as it is
    r = await inv.client.post(f"/v1/simulations/{sim_id}/resume")
    assert r.status_code == 202, r.text
    assert comparable(r.json()) == comparable(expected)


async def test_two_replicas_resuming_at_once_drive_the_job_once(inv: Invoicing) -> None:
    body = await sandbox_customers(inv)
    expected, expected_results = await simulate(inv, body)
    # A replica stored the job, then went away before it ran any chunk.
    gone = replica(inv, "a", silent_for=GONE)
    sim_id = (await gone.create("test", {"from": OCT_1, "to": NOV_1, **body})).simulation_id
    r = await inv.client.get(f"/v1/simulations/{sim_id}")
    assert r.json()["state"] == "interrupted", r.text

    here = simulations_of_app(inv)
    there = replica(inv, "b")
    answers: dict[str, Any] = {}

    async def resume(name: str, sims: Simulations) -> None:
        try:
            answers[name] = (await sims.resume("test", sim_id))["state"]
        except Conflict as error:
            answers[name] = error.message

    async with anyio.create_task_group() as both:
        both.start_soon(resume, "here", here)
        both.start_soon(resume, "there", there)
    drivers = [name for name, sims in (("here", here), ("there", there)) if sim_id in sims._jobs]
    assert len(drivers) == 1, answers
    (loser,) = {"here", "there"} - set(drivers)
    # the loser saw the winner's claim: running, or already done
    assert answers[loser] == "succeeded" or "is running" in answers[loser], answers

    await here.wait(sim_id)
    await there.wait(sim_id)
    job, results = await until_done(inv, sim_id)
    assert comparable(job) == comparable(expected)
    assert results == expected_results


async def test_resuming_a_running_job_is_a_409_and_an_unknown_one_a_404(inv: Invoicing) -> None:
    body = await sandbox_customers(inv)
    alive = replica(inv, "a")  # drives the job and reported just now
    sim_id = (await alive.create("test", {"from": OCT_1, "to": NOV_1, **body})).simulation_id
    assert alive.store.beat(sim_id, alive.driver, alive.now(), state="running")

    r = await inv.client.get(f"/v1/simulations/{sim_id}")
    assert r.json()["state"] == "running", r.text
    r = await inv.client.post(f"/v1/simulations/{sim_id}/resume")
    assert r.status_code == 409, r.text
    assert "is running" in r.json()["error"]["message"]
    assert sim_id not in simulations_of_app(inv)._jobs

    r = await inv.client.post("/v1/simulations/sim_nope/resume")
    assert r.status_code == 404, r.text
