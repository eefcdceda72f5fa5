"""Where each process finds the operator's secrets (tallyray/credentials.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tallyray.credentials import read_secret, remove_secrets_file, write_secrets_file

VAR = "TALLYRAY_TEST_ONLY_SECRET"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (VAR, f"{VAR}_FILE", "TALLYRAY_SECRETS_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_the_environment_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "s").write_text("from the file\n")
    monkeypatch.setenv(f"{VAR}_FILE", str(tmp_path / "s"))
    monkeypatch.setenv(VAR, "from the environment")
    assert read_secret(VAR) == "from the environment"


def test_then_a_file_named_by_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "s").write_text("from the file\n")  # as Kubernetes mounts it: a newline
    monkeypatch.setenv(f"{VAR}_FILE", str(tmp_path / "s"))
    assert read_secret(VAR) == "from the file"


def test_then_the_deployments_secrets_file(monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_secrets_file({VAR: "from the deployment", "OTHER": "x"})
    try:
        assert read_secret(VAR, path) == "from the deployment"
        monkeypatch.setenv("TALLYRAY_SECRETS_FILE", path)
        assert read_secret(VAR) == "from the deployment"
        assert read_secret("TALLYRAY_NOT_THERE") is None
    finally:
        remove_secrets_file(path)
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_the_secrets_file_is_its_owners_alone() -> None:
    path = write_secrets_file({VAR: "s3cret"})
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert json.loads(Path(path).read_text()) == {VAR: "s3cret"}
    finally:
        remove_secrets_file(path)


def test_nothing_found_is_none() -> None:
    assert read_secret(VAR) is None


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_a_broken_secrets_file_is_an_error_that_says_which(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(content)
    with pytest.raises(RuntimeError, match=str(path)):
        read_secret(VAR, str(path))
