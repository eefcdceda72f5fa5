"""The contract holds against a live server: Schemathesis generates requests from
``/openapi.json`` for every operation, and every answer must be a non-5xx that conforms to
the schema of its status (the error shape included)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from served import tallyray_serve

ADMIN_KEY = "trk_admin_" + "c" * 32
CHECKS = "not_a_server_error,response_schema_conformance"
EXAMPLES = os.environ.get("TALLYRAY_SCHEMATHESIS_EXAMPLES", "25")


def schemathesis(base: str, key: str, *selection: str, workdir: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--max-examples",
        EXAMPLES,
        "--seed",
        "20261206",
        "--request-timeout",
        "30",
        *selection,
    ]
    done = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-12_000:] + done.stderr[-3_000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    workdir = tmp_path_factory.mktemp("contract")
    with tallyray_serve(workdir, ADMIN_KEY) as base:
        r = httpx.post(
            f"{base}/v1/admin/keys",
            json={"env": "test", "name": "schemathesis"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert r.status_code == 201, r.text
        yield base, r.json()["key"], workdir


def test_every_operation_answers_within_its_contract(served: tuple[str, str, Path]) -> None:
    base, key, workdir = served
    schemathesis(base, key, "--exclude-path-regex", "^/v1/admin/", workdir=workdir)


def test_key_management_answers_within_its_contract(served: tuple[str, str, Path]) -> None:
    """The admin routes but resharding: a valid request changes the server's shard layout
    (Schemathesis asked for 1,023 shards) — tests/integration/test_reshard.py covers it."""
    base, _, workdir = served
    schemathesis(
        base,
        ADMIN_KEY,
        "--include-path-regex",
        "^/v1/admin/",
        "--exclude-path",
        "/v1/admin/reshard",
        workdir=workdir,
    )
