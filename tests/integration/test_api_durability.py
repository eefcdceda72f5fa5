"""2xx means durable: restarts, killed shards, concurrency, an unreachable store."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from suite_clock import CLOCK
from support import (
    POSTGRES_URL,
    Server,
    create_postgres_database,
    drop_postgres_database,
    killed_and_back,
    make_customer,
    own_shard,
    unique,
)

from tallyray.actors.shard import ShardActor
from tallyray.cluster import Settings, prepare_store
from tallyray.serve.api import Services
from tallyray.serve.app import build_app
from tallyray.serve.shards import NAMESPACE, ShardRouter, shard_name
from tallyray.storage.keys import KeyStore

pytestmark = pytest.mark.anyio


def completion(customer: str, tokens: int, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or unique("evt"),
        "customer_id": customer,
        "type": "llm.completion",
        "properties": {"model": "gpt-4o-mini", "input_tokens": tokens, "output_tokens": 1},
    }


def shard_of(server: Server, customer: str) -> int:
    return server.services.router.index("test", customer)


async def restart_shard(index: int) -> None:
    """Kill a shard the way a crash would, and wait for Ray to bring it back."""
    handle = ray.get_actor(shard_name(index), namespace=NAMESPACE)
    ray.kill(handle, no_restart=False)
    for _ in range(300):
        try:
            await handle.ready.remote()
            return
        except ray.exceptions.RayActorError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"shard {index} did not come back")


async def post_until_acknowledged(
    client: httpx.AsyncClient, events: list[dict[str, Any]], attempts: int = 200
) -> dict[str, int]:
    """What a well-behaved producer does: retry on 503 until the batch is acknowledged."""
    for _ in range(attempts):
        r = await client.post("/v1/events", json=events)
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        await asyncio.sleep(0.05)
    raise AssertionError("never acknowledged")


async def get_when_served(client: httpx.AsyncClient, path: str, attempts: int = 200) -> Any:
    """A read right after a restart: the replica may still see the shard restarting (503 with
    Retry-After, nothing read); a client retries it, as for a write."""
    for _ in range(attempts):
        r = await client.get(path)
        if r.status_code != 503:
            assert r.status_code == 200, r.text
            return r.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered")


async def test_dedup_holds_across_a_restart(client: httpx.AsyncClient, server: Server) -> None:
    customer = await make_customer(client, credits="50.00")
    events = [completion(customer, 1000) for _ in range(20)]
    assert (await client.post("/v1/events", json=events)).json()["ingested"] == 20
    await restart_shard(shard_of(server, customer))
    r = await post_until_acknowledged(client, events)
    assert r == {"ingested": 0, "duplicates": 20}
    balance = await get_when_served(client, f"/v1/customers/{customer}/balance")
    assert balance["usage"]["requests"]["quantity"] == "20"
    assert balance["usage"]["input_tokens"]["quantity"] == "20000"


async def test_recovery_reproduces_the_live_state(
    client: httpx.AsyncClient, server: Server
) -> None:
    """Checkpoint, then more events and a grant after it, then a crash: replaying the log
    after the checkpoint must give back exactly the state the shard had in memory."""
    customer = await make_customer(client, credits="5.00")
    index = shard_of(server, customer)
    await post_until_acknowledged(client, [completion(customer, 5_000_000) for _ in range(3)])
    await ray.get_actor(shard_name(index), namespace=NAMESPACE).checkpoint.remote()
    await post_until_acknowledged(client, [completion(customer, 3_000_000) for _ in range(2)])
    r = await client.post(
        f"/v1/customers/{customer}/credits", json={"amount": "2.50", "priority": 0}
    )
    assert r.status_code == 201
    await post_until_acknowledged(client, [completion(customer, 9_000_000)])
    before = (await client.get(f"/v1/customers/{customer}/balance")).json()
    await restart_shard(index)
    after = await get_when_served(client, f"/v1/customers/{customer}/balance")
    assert after == before
    # 30M input tokens of gpt-4o-mini: 1M free, 9M × 0.00000015 = 1.35,
    # 20M × 0.0000001 + 5 = 7.00; 6 output tokens × 0.0000006 = 0.0000036;
    # 6 requests = 1 package of 2.00 → 10.3500036 spent. The first grant (5.00) was gone
    # before the second (2.50) arrived, which then paid only for the last event (0.9000006):
    # a grant pays for usage after it, never for spend already uncovered.
    assert before["period_spend_precise"] == "10.3500036"
    assert before["credits_remaining"] == "1.60"  # 2.50 − 0.9000006
    assert before["uncovered"] == "4.45"  # 10.3500036 − 5.00 − 0.9000006
    assert before["available"] == "-2.85"


async def test_environments_are_isolated(server: Server) -> None:
    async with server.client(server.test_key) as test, server.client(server.live_key) as live:
        customer = await make_customer(test, credits="10.00")
        assert (await test.get(f"/v1/customers/{customer}")).status_code == 200
        assert (await live.get(f"/v1/customers/{customer}")).status_code == 404
        assert (await live.get(f"/v1/customers/{customer}/balance")).status_code == 404
        r = await live.post("/v1/events", json=[completion(customer, 10)])
        assert r.status_code == 422 and "unknown customer" in r.text
        r = await live.get("/v1/usage", params={"customer_id": customer, "meter": "requests"})
        assert r.status_code == 404
        # the same id in live is another customer, with its own currency and balance
        r = await live.post("/v1/customers", json={"id": customer, "currency": "USD"})
        assert r.status_code == 201
        await live.post("/v1/subscriptions", json={"customer_id": customer, "plan": "starter"})
        await live.post("/v1/events", json=[completion(customer, 1_000_000)])
        await test.post("/v1/events", json=[completion(customer, 10)])
        live_balance = (await live.get(f"/v1/customers/{customer}/balance")).json()
        test_balance = (await test.get(f"/v1/customers/{customer}/balance")).json()
        assert live_balance["currency"] == "USD" and test_balance["currency"] == "EUR"
        assert live_balance["usage"]["input_tokens"]["quantity"] == "1000000"
        assert test_balance["usage"]["input_tokens"]["quantity"] == "10"
        # meters created with a test key do not exist in live
        key = unique("m")
        await test.post("/v1/meters", json={"key": key, "event_type": "x", "aggregation": "count"})
        test_meters = {m["key"] for m in (await test.get("/v1/meters")).json()["meters"]}
        live_meters = {m["key"] for m in (await live.get("/v1/meters")).json()["meters"]}
        assert key in test_meters and key not in live_meters


async def test_a_killed_shard_loses_nothing_and_counts_nothing_twice(
    client: httpx.AsyncClient, server: Server
) -> None:
    customers = [await make_customer(client, plan="starter", currency="USD") for _ in range(12)]
    expected_tokens: dict[str, int] = defaultdict(int)
    expected_count: dict[str, int] = defaultdict(int)
    rng = random.Random(42)
    batches = []
    for _ in range(60):
        batch = []
        for _ in range(50):
            customer = rng.choice(customers)
            tokens = rng.randrange(1, 5000)
            batch.append(completion(customer, tokens))
            expected_tokens[customer] += tokens
            expected_count[customer] += 1
        batches.append(batch)
    acknowledged = 0

    async def producer(mine: list[list[dict[str, Any]]]) -> None:
        nonlocal acknowledged
        for batch in mine:
            result = await post_until_acknowledged(client, batch)
            acknowledged += result["ingested"]

    async def killer() -> None:
        for index in (0, 1, 0):
            await asyncio.sleep(0.4)
            await restart_shard(index)

    producers = [producer(batches[i::6]) for i in range(6)]
    await asyncio.gather(killer(), *producers)

    assert acknowledged <= 3000  # an acknowledgement can be lost; a duplicate never counts
    for customer in customers:
        balance = await get_when_served(client, f"/v1/customers/{customer}/balance")
        usage = balance["usage"]
        assert usage["requests"]["quantity"] == str(expected_count[customer]), customer
        assert usage["input_tokens"]["quantity"] == str(expected_tokens[customer]), customer
    # and the log holds each event exactly once
    from sqlalchemy import func, select

    from tallyray.storage import tables as t

    with server.catalog.engine.connect() as conn:
        stored = conn.execute(
            select(func.count()).where(t.events.c.customer_id.in_(customers))
        ).scalar_one()
    assert stored == 3000


async def test_a_restarted_shard_that_only_gets_reads_checkpoints(
    server: Server, tmp_path: Path
) -> None:
    """A restarted shard starts its committer and checkpointer by itself: with only reads
    after the crash it still checkpoints (and writes what its replay fired)."""
    async with own_shard(server.store, tmp_path, server.settings.config_path, CLOCK) as own:
        customer = await make_customer(own.client, plan="starter", currency="USD")
        await post_until_acknowledged(own.client, [completion(customer, 100)])
        await killed_and_back(own.shard)
        for _ in range(600):
            status = await own.status()
            if status["checkpoint_age_seconds"] is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no checkpoint since the restart: {status}")
        balance = await get_when_served(own.client, f"/v1/customers/{customer}/balance")
        assert balance["usage"]["input_tokens"]["quantity"] == "100"


async def test_concurrent_reservations_never_exceed_the_balance(client: httpx.AsyncClient) -> None:
    """1,000 concurrent reservations of 1.00 against 100.00 of credit: exactly 100 holds."""
    meter, plan = unique("calls"), unique("per-call")
    r = await client.post(
        "/v1/meters", json={"key": meter, "event_type": meter, "aggregation": "count"}
    )
    assert r.status_code == 201
    r = await client.post(
        "/v1/plans",
        json={
            "key": plan,
            "currency": "EUR",
            "interval": "month",
            "charges": [{"meter": meter, "model": "per_unit", "unit_amount": "1.00"}],
        },
    )
    assert r.status_code == 201, r.text
    customer = await make_customer(client, plan=plan, credits="100.00")
    body = {"customer_id": customer, "event": {"type": meter}}
    answers = await asyncio.gather(
        *(client.post("/v1/reservations", json=body) for _ in range(1000))
    )
    allowed = [a.json() for a in answers if a.json()["allowed"]]
    assert all(a.status_code in (200, 201) for a in answers)
    assert len(allowed) == 100
    assert len({a["id"] for a in allowed}) == 100
    balance = (await client.get(f"/v1/customers/{customer}/balance")).json()
    assert balance["holds"] == "100.00" and balance["available"] == "0.00"


class TcpProxy:
    """A loopback TCP forwarder the test can cut, to make the database unreachable."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    def start(self) -> None:
        self._run(self._start())

    def stop(self) -> None:
        self._run(self._stop())


async def test_unreachable_store_is_503_and_nothing_is_acknowledged(server: Server) -> None:
    if server.store != "postgres":
        pytest.skip("cuts a TCP connection to PostgreSQL")
    assert POSTGRES_URL is not None
    url = create_postgres_database(POSTGRES_URL)
    proxy = TcpProxy(5432)
    proxy.start()
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert proxied != url
    settings = Settings.load(database_url=url, shards=1, config_path=server.settings.config_path)
    catalog = prepare_store(settings)
    name = unique("probe-shard")
    probe = ray.remote(ShardActor).options(name=name, namespace=NAMESPACE, max_restarts=0)
    handle = probe.remote(0, 1, proxied, 60.0)
    try:
        await handle.ready.remote()
        services = Services(catalog=catalog, router=ShardRouter(1, lambda i: handle))
        _, key = KeyStore(catalog.engine).create("test", server.clock())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(services)),
            base_url="http://probe",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as c:
            customer = await make_customer(c, credits="10.00")
            first = [completion(customer, 100)]
            assert (await c.post("/v1/events", json=first)).json()["ingested"] == 1

            proxy.stop()
            second = [completion(customer, 200) for _ in range(3)]
            r = await c.post("/v1/events", json=second)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "store_unavailable"
            balance = (await c.get(f"/v1/customers/{customer}/balance")).json()
            assert balance["usage"]["input_tokens"]["quantity"] == "100"  # nothing applied

            proxy.start()
            r = await post_until_acknowledged(c, second)
            assert r == {"ingested": 3, "duplicates": 0}
            balance = (await c.get(f"/v1/customers/{customer}/balance")).json()
            assert balance["usage"]["input_tokens"]["quantity"] == "700"
    finally:
        ray.kill(handle, no_restart=True)
        proxy.stop()
        catalog.engine.dispose()
        drop_postgres_database(POSTGRES_URL, url)
