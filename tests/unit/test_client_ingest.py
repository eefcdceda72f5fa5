"""The buffered ingest without a server: batches, retries, refused events, the bounded queue
and the spool (httpx's MockTransport plays the API)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from tallyray_client import AsyncTallyray, Backoff, BufferFull, Rejected, SpoolLocked, Tallyray
from tallyray_client.buffer import _Item, judge
from tallyray_client.spool import Spool

URL = "http://tallyray.test"
KEY = "trk_test_" + "x" * 32
FAST = Backoff(base=0.001, cap=0.002)


def events(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"e{i}", "customer_id": "acme", "type": "llm.completion", "properties": {}}
        for i in range(start, start + n)
    ]


class Api:
    """``/v1/events``: fails the first ``failures`` attempts as told, then stores; counts
    every event id once, as the server does."""

    def __init__(self, failures: list[Any] | None = None) -> None:
        self.failures = list(failures or [])
        self.batches: list[list[dict[str, Any]]] = []
        self.keys: list[str] = []
        self.stored: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)
        self.batches.append(batch)
        self.keys.append(request.headers["idempotency-key"])
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure(batch) if callable(failure) else failure
        new = [e for e in batch if e["id"] not in self.stored]
        for e in batch:
            self.stored[e["id"]] = self.stored.get(e["id"], 0) + 1
        return httpx.Response(200, json={"ingested": len(new), "duplicates": len(batch) - len(new)})


def gateway(api: Any, **kw: Any) -> Tallyray:
    settings: dict[str, Any] = {"flush_interval": 0.01, "ingest_backoff": FAST, **kw}
    return Tallyray(URL, KEY, transport=httpx.MockTransport(api), **settings)


def busy(
    status: int, message: str = "try later", type: str = "x", **headers: str
) -> httpx.Response:
    body = {"error": {"type": type, "message": message, "details": []}}
    return httpx.Response(status, json=body, headers=headers)


STILL_ANSWERED = busy(409, "still being answered", type="request_in_progress")


def test_events_go_in_batches_of_batch_size() -> None:
    api = Api()
    with gateway(api, batch_size=500, flush_interval=60) as tallyray:
        tallyray.ingest(events(1200))
        assert tallyray.flush(timeout=30)  # flush sends the last 200 at once
    assert [len(b) for b in api.batches] == [500, 500, 200]


def test_events_without_an_id_get_one_before_the_first_attempt() -> None:
    api = Api([httpx.ConnectError("refused")])
    with gateway(api) as tallyray:
        ids = tallyray.ingest([{"customer_id": "acme", "type": "llm.completion"}])
        assert tallyray.flush(timeout=30)
    assert [b[0]["id"] for b in api.batches] == ids * 2  # the retry sent the same id


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("no answer"),
        busy(503, **{"retry-after": "0"}),
        busy(500),
        busy(429, **{"retry-after": "0"}),
        busy(401),  # a key to fix: the events wait, they are not dropped
        STILL_ANSWERED,  # the first attempt, whose answer was lost, is still running
    ],
)
def test_a_batch_is_retried_with_its_key_until_it_is_acknowledged(failure: Any) -> None:
    api = Api([failure, failure])
    with gateway(api) as tallyray:
        tallyray.ingest(events(3))
        assert tallyray.flush(timeout=30)
    assert len(api.batches) == 3 and len(set(api.keys)) == 1
    assert api.stored == {"e0": 1, "e1": 1, "e2": 1}


def test_events_a_422_names_are_reported_and_dropped_and_the_rest_sent_again() -> None:
    def refuse_two(batch: list[dict[str, Any]]) -> httpx.Response:
        details = [
            {"where": "[1]", "message": "unknown customer 'nobody': create it first"},
            {"where": "[3]", "message": "property 'input_tokens' must be a number"},
        ]
        error = {"type": "invalid_events", "message": "2 events are invalid", "details": details}
        return httpx.Response(422, json={"error": error})

    api = Api([refuse_two])
    rejected: list[Rejected] = []
    with gateway(api, on_rejected=rejected.append) as tallyray:
        tallyray.ingest(events(5))
        assert tallyray.flush(timeout=30)
    assert [(r.event["id"], r.message[:16]) for r in rejected] == [
        ("e1", "unknown customer"),
        ("e3", "property 'input_"),
    ]
    assert [[e["id"] for e in b] for b in api.batches] == [
        ["e0", "e1", "e2", "e3", "e4"],
        ["e0", "e2", "e4"],
    ]
    assert api.keys[0] != api.keys[1]  # another body, another key


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (httpx.Response(200, json={}), "done"),
        (busy(400), "all rejected"),  # no event named: the batch as a whole is wrong
        (busy(404), "all rejected"),
        (busy(413), "split"),
        (busy(422), "all rejected"),
        (busy(502), "retry"),
        (busy(403), "retry"),
        (busy(409, "meter 'x' cannot change"), "all rejected"),
        (STILL_ANSWERED, "retry"),
    ],
)
def test_what_the_ingest_does_with_each_answer(answer: httpx.Response, outcome: str) -> None:
    batch = [_Item(e, None) for e in events(4)]
    verdict = judge(batch, answer)
    found = (
        "retry"
        if verdict.wait is not None
        else "done"
        if verdict.done == batch
        else "split"
        if [len(b) for b in verdict.again] == [2, 2]
        else "all rejected"
        if len(verdict.rejected) == 4 and not verdict.again
        else "?"
    )
    assert found == outcome


def test_a_full_queue_raises_at_once_when_told_to() -> None:
    sending, gate = threading.Event(), threading.Event()
    api = Api()

    def stuck(request: httpx.Request) -> httpx.Response:
        sending.set()
        gate.wait(30)
        return api(request)

    tallyray = gateway(stuck, max_queue=10, on_full="raise", batch_size=5)
    try:
        tallyray.ingest(events(5))
        assert sending.wait(30)  # the sender took these 5 and is stuck sending them
        tallyray.ingest(events(10, start=5))  # the queue: 10
        with pytest.raises(BufferFull, match="max_queue=10"):
            tallyray.ingest(events(1, start=15))
    finally:
        gate.set()
        assert tallyray.close(timeout=30)
    assert sorted(api.stored) == sorted(f"e{i}" for i in range(15))


def test_a_full_queue_blocks_for_put_timeout_then_raises() -> None:
    sending, gate = threading.Event(), threading.Event()

    def stuck(request: httpx.Request) -> httpx.Response:
        sending.set()
        gate.wait(30)
        return httpx.Response(200, json={"ingested": 0, "duplicates": 0})

    tallyray = gateway(stuck, max_queue=3, put_timeout=0.05, batch_size=1)
    try:
        tallyray.ingest(events(1))
        assert sending.wait(30)  # the sender is stuck with the first event
        tallyray.ingest(events(3, start=1))  # the queue: 3
        with pytest.raises(BufferFull):
            tallyray.ingest(events(1, start=4))
    finally:
        gate.set()
        tallyray.close(timeout=30)


# -- the spool ----------------------------------------------------------------------------


def test_events_in_the_spool_survive_a_restart_of_the_gateway(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    first = gateway(down, spool_dir=tmp_path)
    first.ingest(events(10))
    assert first.close(timeout=0.05) is False  # the server is down: nothing acknowledged
    assert list(tmp_path.glob("*.jsonl"))

    up = Api()
    with gateway(up, spool_dir=tmp_path) as second:  # sends what the first left, at once
        second.ingest(events(2, start=10))
        assert second.flush(timeout=30)
    assert up.stored == {f"e{i}": 1 for i in range(12)}
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob("*.acks"))


def test_acknowledged_events_are_not_sent_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_events=4)
    first = spool.append(events(4))  # segment 1, full
    second = spool.append(events(2, start=4))  # segment 2
    spool.ack(first, ["e0", "e1"])
    spool.ack(second, ["e4"])
    die(spool)  # no close(), and the last line is cut short by the crash
    with (tmp_path / f"{second:08d}.jsonl").open("a") as f:
        f.write('{"id": "e6", "custo')

    again = Spool(tmp_path)
    assert [e["id"] for e, _ in again.recover()] == ["e2", "e3", "e5"]
    assert again.pending() == 3
    again.close()


def die(spool: Spool) -> None:
    """What a crash does to a spool: its files are closed, nothing is cleaned up."""
    for f in [spool._file, *spool._acks.values(), spool._lock]:
        if f is not None:
            f.close()


def test_a_segment_goes_once_everything_in_it_is_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_events=2)
    first = spool.append(events(2))
    spool.append(events(1, start=2))  # rotates: segment 1 is closed
    assert (tmp_path / f"{first:08d}.jsonl").exists()
    spool.ack(first, ["e0", "e1"])
    assert not (tmp_path / f"{first:08d}.jsonl").exists()
    spool.close()


def test_one_client_at_a_time_on_a_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_ingest_batches_retries_and_spools(tmp_path: Path) -> None:
    api = Api([busy(503, **{"retry-after": "0"}), httpx.ConnectError("refused")])
    transport = httpx.MockTransport(api)
    async with AsyncTallyray(
        URL,
        KEY,
        transport=transport,
        ingest_backoff=FAST,
        batch_size=4,
        flush_interval=0.01,
        spool_dir=tmp_path,
    ) as tallyray:
        await tallyray.ingest(events(10))
        assert await tallyray.flush(timeout=30)
    assert api.stored == {f"e{i}": 1 for i in range(10)}
    assert not list(tmp_path.glob("*.jsonl"))
