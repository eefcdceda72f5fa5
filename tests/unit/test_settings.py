"""Server settings from the environment: each variable to its typed field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from line_certs import self_signed

from tallyray.actors.limits import Limits
from tallyray.actors.shard_line import LineOptions, LineTLS
from tallyray.cluster.placement import RESOURCE_SHARE, ingress_options, shard_options
from tallyray.cluster.settings import Settings
from tallyray.serve.api import CUSTOMER_CACHE_SIZE


@pytest.mark.parametrize(
    ("variable", "raw", "field", "value"),
    [
        ("TALLYRAY_SHARDS", "3", "shards", 3),  # int
        ("TALLYRAY_CHECKPOINT_SECONDS", "0.5", "checkpoint_seconds", 0.5),  # float
        ("TALLYRAY_ACCESS_LOG", "1", "access_log", True),  # bool
        ("TALLYRAY_ACCESS_LOG", "false", "access_log", False),
        ("TALLYRAY_AUTO_CREATE_CUSTOMERS", "yes", "auto_create_customers", True),
        ("TALLYRAY_DEFAULT_CURRENCY", "USD", "default_currency", "USD"),  # text
        ("TALLYRAY_ACCESS_LOG", "", "access_log", False),  # empty: the default
        ("TALLYRAY_WEBHOOK_ALLOW_PRIVATE", "1", "webhook_allow_private", True),
        ("TALLYRAY_WEBHOOK_ALLOW_PRIVATE", "0", "webhook_allow_private", False),
        ("TALLYRAY_MAX_HOLDS_PER_CUSTOMER", "50", "max_holds_per_customer", 50),
        ("TALLYRAY_MAX_ALERT_RULES_PER_CUSTOMER", "5", "max_alert_rules_per_customer", 5),
        ("TALLYRAY_MAX_GROUPS_PER_METER", "200", "max_groups_per_meter", 200),
        ("TALLYRAY_MAX_UNIQUE_VALUES", "3000", "max_unique_values", 3000),
    ],
)
def test_environment_variables_become_typed_settings(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, field: str, value: Any
) -> None:
    monkeypatch.setenv(variable, raw)
    assert getattr(Settings.load(), field) == value


def test_the_access_log_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALLYRAY_ACCESS_LOG", raising=False)
    assert Settings.load().access_log is False


def test_webhooks_go_to_public_addresses_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALLYRAY_WEBHOOK_ALLOW_PRIVATE", raising=False)
    assert Settings.load().webhook_allow_private is False


def test_shards_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLYRAY_SHARDS", "0")
    with pytest.raises(ValueError, match="TALLYRAY_SHARDS must be at least 1"):
        Settings.load()


def test_the_customer_cache_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALLYRAY_CUSTOMER_CACHE_SIZE", raising=False)
    assert Settings.load().customer_cache_size == CUSTOMER_CACHE_SIZE
    monkeypatch.setenv("TALLYRAY_CUSTOMER_CACHE_SIZE", "500")
    assert Settings.load().customer_cache_size == 500


def test_the_limits_go_to_shards_and_routes_as_one_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLYRAY_MAX_GROUPS_PER_METER", "200")
    assert Settings.load().limits == Limits(groups_per_meter=200)


@pytest.mark.parametrize(
    "variable",
    [
        "TALLYRAY_MAX_HOLDS_PER_CUSTOMER",
        "TALLYRAY_MAX_ALERT_RULES_PER_CUSTOMER",
        "TALLYRAY_MAX_GROUPS_PER_METER",
        "TALLYRAY_MAX_UNIQUE_VALUES",
        "TALLYRAY_CUSTOMER_CACHE_SIZE",
    ],
)
def test_limits_must_be_positive(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "0")
    with pytest.raises(ValueError, match=f"{variable} must be at least 1"):
        Settings.load()


# --- secrets: never handed to other processes as arguments -----------------------------------

SECRET_ENV = {
    "TALLYRAY_DATABASE_URL": "postgresql://billing:pa55word@db.internal/tallyray",
    "TALLYRAY_ADMIN_KEY": "trk_admin_" + "k" * 32,
    "TALLYRAY_STRIPE_TEST_API_KEY": "sk_test_" + "s" * 24,
    "TALLYRAY_STRIPE_TEST_WEBHOOK_SECRET": "whsec_" + "w" * 24,
}
NORMALIZED = "postgresql+psycopg://billing:pa55word@db.internal/tallyray"  # psycopg 3


def test_what_other_processes_are_handed_holds_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load()
    shared = settings.shared()
    text = repr(shared)
    assert not any(secret in text for secret in SECRET_ENV.values())
    assert shared["database_url"] is None and shared["admin_key"] is None
    assert settings.secret_values() == {**SECRET_ENV, "TALLYRAY_DATABASE_URL": NORMALIZED}


def test_a_process_reads_its_secrets_from_the_secrets_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tallyray.credentials import remove_secrets_file, write_secrets_file

    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load()
    path = write_secrets_file(settings.secret_values())
    try:
        for name in SECRET_ENV:  # the other process's environment has none of them
            monkeypatch.delenv(name)
        shared = {**settings.shared(), "secrets_file": path}
        there = Settings.from_shared(shared)
        assert there.database_url == NORMALIZED
        assert there.stripe_test_api_key == SECRET_ENV["TALLYRAY_STRIPE_TEST_API_KEY"]
        assert there.port == settings.port and there.shards == settings.shards
    finally:
        remove_secrets_file(path)


def test_a_secret_may_come_from_a_file_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    secret = tmp_path / "db"
    secret.write_text("postgresql://from-a-mounted-secret/tallyray\n")
    monkeypatch.delenv("TALLYRAY_DATABASE_URL", raising=False)
    monkeypatch.setenv("TALLYRAY_DATABASE_URL_FILE", str(secret))
    assert Settings.load().database_url == "postgresql+psycopg://from-a-mounted-secret/tallyray"


def test_a_process_without_its_database_url_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TALLYRAY_DATABASE_URL", raising=False)
    monkeypatch.delenv("TALLYRAY_SECRETS_FILE", raising=False)
    with pytest.raises(RuntimeError, match="no database URL"):
        Settings.from_shared(Settings().shared())


def test_tls_on_the_shard_line_needs_a_readable_certificate_and_key(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = Settings.load(shard_line_tls_cert=str(cert), shard_line_tls_key=str(key)).line_options
    assert tls == LineOptions(remote=True, tls=LineTLS(str(cert), str(key)))
    with pytest.raises(ValueError, match="needs both TALLYRAY_SHARD_LINE_TLS_CERT"):
        Settings.load(shard_line_tls_cert=str(cert))
    with pytest.raises(ValueError, match="cannot load the certificate"):
        Settings.load(shard_line_tls_cert=str(cert), shard_line_tls_key=str(tmp_path / "none"))
    assert Settings.load(shard_line_remote=False).line_options == LineOptions(remote=False)


def test_placement_options() -> None:
    plain = Settings.load(replicas=2)
    assert shard_options(plain) == {"num_cpus": 0, "scheduling_strategy": "SPREAD", "resources": {}}
    assert ingress_options(plain) == {"num_replicas": 2}
    narrowed = Settings.load(shard_resource="tallyray_shard", ingress_resource="tallyray_ingress")
    assert shard_options(narrowed)["resources"] == {"tallyray_shard": RESOURCE_SHARE}
    assert ingress_options(narrowed) == {
        "num_replicas": 1,
        "ray_actor_options": {"resources": {"tallyray_ingress": RESOURCE_SHARE}},
    }
