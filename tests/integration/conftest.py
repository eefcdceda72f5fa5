"""Integration fixtures: one local Ray per session, real shard actors, real databases.

Every test runs against SQLite, and against PostgreSQL too when ``TALLYRAY_TEST_POSTGRES_URL``
is set (``.ci/run`` sets it). Each store gets a fresh database, migrated, with the example
config loaded; shards are real Ray actors (``shard-<i>`` in namespace ``tallyray``). The HTTP
app is the real FastAPI app, driven in-process through httpx's ASGI transport so tests can
fire thousands of concurrent requests cheaply; ``tests/e2e`` covers the Serve HTTP path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import ray
from suite_clock import CLOCK
from support import (
    POSTGRES_URL,
    Server,
    create_postgres_database,
    drop_postgres_database,
    kill_shards,
)

from tallyray.cluster import Settings, prepare_store, start_ray, start_shards
from tallyray.cluster.wiring import share_secrets
from tallyray.credentials import remove_secrets_file
from tallyray.serve.app import Services, build_app
from tallyray.serve.intake import IntakeRules
from tallyray.serve.shards import ShardRouter
from tallyray.storage.catalog import CustomerRecord
from tallyray.storage.keys import KeyStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "llm-api" / "tallyray.json"
SHARDS = 2
STORES = ["sqlite", *(["postgres"] if POSTGRES_URL else [])]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    start_ray(Settings(), num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session", params=STORES)
def server(
    request: pytest.FixtureRequest, ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    store = request.param
    if store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('store')}/tallyray.db"
    settings = Settings.load(
        database_url=url,
        shards=SHARDS,
        checkpoint_seconds=0.5,
        config_path=str(EXAMPLE_CONFIG),
        clock_offset_us=CLOCK.offset_us,
    )
    kill_shards(SHARDS)  # a previous store's shards must not answer for this one
    catalog = prepare_store(settings)
    settings = share_secrets(settings)  # the shards read the database URL as a secret
    start_shards(settings)
    services = Services(
        catalog=catalog,
        router=ShardRouter(SHARDS),
        rules=IntakeRules(),
        cache_seconds=0.2,
        clock=settings.clock,
    )
    now = settings.clock()
    keys = KeyStore(catalog.engine)
    _, test_key = keys.create("test", now)
    _, live_key = keys.create("live", now)
    yield Server(store, settings, catalog, services, build_app(services), test_key, live_key)
    kill_shards(SHARDS)
    catalog.engine.dispose()  # its pooled connections, closed here rather than by the GC
    assert settings.secrets_file is not None
    remove_secrets_file(settings.secrets_file)
    if store == "postgres" and POSTGRES_URL is not None:
        drop_postgres_database(POSTGRES_URL, url)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as c:
        yield c


@pytest.fixture
def store_url(server: Server, tmp_path: Path) -> Iterator[str]:
    """A fresh store of the server's kind with the example config and three customers on
    ``pro`` (``p``, ``q`` and ``r``, no credit yet), for a :func:`~support.core_on` of a
    test's own."""
    if server.store == "postgres":
        assert POSTGRES_URL is not None
        url = create_postgres_database(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path}/core.db"
    catalog = prepare_store(
        Settings.load(database_url=url, config_path=server.settings.config_path)
    )
    now = CLOCK()
    for customer in ("p", "q", "r"):
        catalog.upsert_customer(CustomerRecord("test", customer, "EUR"), now)
        catalog.subscribe("test", customer, "pro", now, now)
    catalog.engine.dispose()
    yield url
    if server.store == "postgres" and POSTGRES_URL is not None:
        drop_postgres_database(POSTGRES_URL, url)
