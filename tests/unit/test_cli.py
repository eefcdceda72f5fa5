"""The ``tallyray`` command, run in-process (tallyray/cli.py)."""

from __future__ import annotations

import io
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tallyray.cli import EXIT_BAD_INPUT, EXIT_OK, main

D = Decimal


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_events(tmp_path: Path, *lines: str | dict[str, Any]) -> str:
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return str(path)


def write_config(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "tallyray.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def completion(model: str, input_tokens: Any, output_tokens: Any = 0) -> dict[str, Any]:
    return {
        "type": "llm.completion",
        "properties": {
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        },
    }


def small_config(**plan_changes: Any) -> dict[str, Any]:
    plan = {
        "key": "starter",
        "currency": "USD",
        "interval": "month",
        "charges": [{"meter": "input_tokens", "model": "per_unit", "unit_amount": "0.000002"}],
    }
    plan.update(plan_changes)
    return {
        "meters": [
            {
                "key": "input_tokens",
                "event_type": "llm.completion",
                "aggregation": "sum",
                "value": "input_tokens",
            }
        ],
        "plans": [plan],
    }


# --- success ---------------------------------------------------------------------------------


def test_price_the_example(
    capsys: pytest.CaptureFixture[str], example_config_path: Path, example_events_path: Path
) -> None:
    code, out, err = run(
        capsys,
        "price",
        "--config",
        str(example_config_path),
        "--plan",
        "starter",
        "--events",
        str(example_events_path),
    )
    assert code == EXIT_OK
    assert err == ""  # every event type in the example has a meter
    preview = json.loads(out)
    assert preview["plan"] == "starter"
    assert preview["currency"] == "USD"
    # 13,148,531 × 0.000002 = 26.297062 → 26.30
    # 1,935,476 × 0.000008 = 15.483808 → 15.48;  26.30 + 15.48 = 41.78
    assert [(line["quantity"], line["amount"]) for line in preview["lines"]] == [
        ("13148531", "26.30"),
        ("1935476", "15.48"),
    ]
    assert (preview["subtotal"], preview["total"]) == ("41.78", "41.78")


@pytest.mark.parametrize("plan", ["starter", "pro", "gpu"])
def test_every_example_plan_prices_to_strings_that_add_up(
    capsys: pytest.CaptureFixture[str],
    example_config_path: Path,
    example_events_path: Path,
    plan: str,
) -> None:
    code, out, _ = run(
        capsys,
        "price",
        "--config",
        str(example_config_path),
        "--plan",
        plan,
        "--events",
        str(example_events_path),
    )
    assert code == EXIT_OK
    preview = json.loads(out)
    assert isinstance(preview["currency"], str)
    assert isinstance(preview["subtotal"], str) and isinstance(preview["total"], str)
    assert preview["lines"]
    for line in preview["lines"]:
        assert isinstance(line["amount"], str) and isinstance(line["precise_amount"], str)
    assert sum(D(line["amount"]) for line in preview["lines"]) == D(preview["subtotal"])


def test_price_gpu_plan_in_whole_yen(
    capsys: pytest.CaptureFixture[str], example_config_path: Path, example_events_path: Path
) -> None:
    _, out, _ = run(
        capsys,
        "price",
        *("--config", str(example_config_path)),
        *("--plan", "gpu"),
        *("--events", str(example_events_path)),
    )
    preview = json.loads(out)
    assert preview["currency"] == "JPY"
    for line in preview["lines"]:
        assert "." not in line["amount"]  # JPY has no minor unit
    assert preview["subtotal"] == str(sum(int(line["amount"]) for line in preview["lines"]))


def test_price_reads_events_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, example_config_path: Path
) -> None:
    stdin = "\n".join(
        [
            json.dumps(completion("gpt-4o-mini", 1000, 500)),
            "",  # blank lines are skipped
            json.dumps(completion("gpt-4o", 2000)),
        ]
    )
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((stdin + "\n").encode())))
    code, out, err = run(
        capsys, "price", "--config", str(example_config_path), "--plan", "starter", "--events", "-"
    )
    assert code == EXIT_OK, err
    preview = json.loads(out)
    # input:  (1,000 + 2,000) × 0.000002 = 0.006 → 0.01
    # output: 500 × 0.000008 = 0.004 → 0.00;  0.01 + 0.00 = 0.01
    assert [line["amount"] for line in preview["lines"]] == ["0.01", "0.00"]
    assert [line["precise_amount"] for line in preview["lines"]] == ["0.006", "0.004"]
    assert preview["subtotal"] == "0.01"


def test_price_notes_event_types_no_meter_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    events = write_events(
        tmp_path, completion("m", 1_000_000), {"type": "image.generated", "properties": {}}
    )
    code, out, err = run(
        capsys,
        "price",
        *("--config", write_config(tmp_path, small_config())),
        *("--plan", "starter", "--events", events),
    )
    assert code == EXIT_OK
    assert json.loads(out)["subtotal"] == "2.00"  # 1,000,000 × 0.000002 = 2.00
    assert "note: no meter counts events of type image.generated" in err


def test_check_config_ok(capsys: pytest.CaptureFixture[str], example_config_path: Path) -> None:
    code, out, err = run(capsys, "check-config", str(example_config_path))
    assert code == EXIT_OK
    assert err == ""
    assert json.loads(out) == {
        "ok": True,
        "meters": ["gpu_seconds", "input_tokens", "output_tokens", "requests", "seats"],
        "plans": ["gpu", "pro", "starter"],
        "customers": ["acme"],
    }


@pytest.mark.parametrize(
    ("customer", "where", "fragment"),
    [
        ({"id": "c", "currency": "EUR", "plan": "nope"}, "customers[0].plan", "unknown plan"),
        ({"id": "c", "currency": "USD", "plan": "pro"}, "customers[0].plan", "another currency"),
        ({"id": "c", "currency": "EURO"}, "customers[0].currency", "unknown currency"),
        ({"id": "c", "currency": "EUR", "colour": "red"}, "customers[0].colour", "unknown field"),
        (
            {"id": "c", "currency": "EUR", "billing_mode": "free"},
            "customers[0].billing_mode",
            "must be one of prepaid, postpaid",
        ),
    ],
)
def test_check_config_customers(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    example_config_path: Path,
    customer: dict[str, Any],
    where: str,
    fragment: str,
) -> None:
    doc = json.loads(example_config_path.read_text())
    doc["customers"] = [customer]
    path = tmp_path / "tallyray.json"
    path.write_text(json.dumps(doc))
    code, out, err = run(capsys, "check-config", str(path))
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert where in err and fragment in err


# --- bad input: exit 2, nothing on stdout, the place named on stderr -------------------------


def price_with_events(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *lines: str | dict[str, Any]
) -> tuple[int, str, str]:
    return run(
        capsys,
        "price",
        *("--config", write_config(tmp_path, small_config())),
        *("--plan", "starter", "--events", write_events(tmp_path, *lines)),
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [completion("m", 1), "{not json", completion("m", 2)],
            ["line 2: not valid JSON"],
        ),
        (
            [completion("m", 1), completion("m", 2), {"properties": {"input_tokens": 3}}],
            ["line 3: 'type' must be a non-empty string, not None"],
        ),
        (
            [completion("m", 1), completion("m", "12")],
            ["line 2: meter 'input_tokens': property 'input_tokens' must be a number, got '12'"],
        ),
        (
            [completion("m", 1), {"type": "llm.completion", "timestamp": "yesterday"}],
            ["line 2: 'timestamp' 'yesterday' is not RFC 3339"],
        ),
        (
            ["[1, 2]"],
            ["line 1: an event must be a JSON object, not list"],
        ),
        (
            # every bad line is reported, not only the first
            ["oops", completion("m", 1), {"type": ""}],
            ["line 1: not valid JSON", "line 3: 'type' must be a non-empty string", "2 events"],
        ),
        (
            # a missing value and a boolean value, both named
            [completion("m", 1), {"type": "llm.completion"}, completion("m", True)],
            ["line 2: meter 'input_tokens' needs property 'input_tokens'", "line 3: meter"],
        ),
    ],
    ids=["not-json", "missing-type", "string-value", "bad-timestamp", "array", "several", "values"],
)
def test_bad_events(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    lines: list[str | dict[str, Any]],
    expected: list[str],
) -> None:
    code, out, err = price_with_events(capsys, tmp_path, *lines)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert err.startswith("tallyray price: ")
    for fragment in expected:
        assert fragment in err


def test_bad_event_on_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        sys,
        "stdin",
        io.TextIOWrapper(io.BytesIO((json.dumps(completion("m", 1)) + "\n{]\n").encode())),
    )
    code, out, err = run(
        capsys,
        "price",
        *("--config", write_config(tmp_path, small_config())),
        *("--plan", "starter", "--events", "-"),
    )
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert "line 2: not valid JSON" in err


def test_unknown_plan(capsys: pytest.CaptureFixture[str], example_config_path: Path) -> None:
    code, out, err = run(
        capsys,
        "price",
        *("--config", str(example_config_path), "--plan", "enterprise"),
        *("--events", str(example_config_path.parent / "events.jsonl")),
    )
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert "no plan 'enterprise' in the configuration (plans: gpu, pro, starter)" in err


@pytest.mark.parametrize(
    ("plan_changes", "where", "fragment"),
    [
        (
            {"charges": [{"meter": "input_tokens", "model": "per_unit", "unit_amount": 0.1}]},
            "plans[0].charges[0].unit_amount",
            "write it as a string",
        ),
        ({"currency": "USDOLLAR"}, "plans[0].currency", "unknown currency code 'USDOLLAR'"),
    ],
    ids=["float-amount", "unknown-currency"],
)
@pytest.mark.parametrize("command", ["price", "check-config"])
def test_bad_config(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    plan_changes: dict[str, Any],
    where: str,
    fragment: str,
) -> None:
    config = write_config(tmp_path, small_config(**plan_changes))
    if command == "price":
        events = write_events(tmp_path, completion("m", 1))
        argv = ["price", "--config", config, "--plan", "starter", "--events", events]
    else:
        argv = ["check-config", config]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert f"tallyray {command}: invalid configuration: 1 problem" in err
    assert f"  - {where}: " in err
    assert fragment in err


def test_config_that_is_not_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "tallyray.json"
    path.write_text('{"meters": [\n  {"key": "a",}\n]}', encoding="utf-8")
    code, out, err = run(capsys, "check-config", str(path))
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert "not valid JSON at line 2" in err


@pytest.mark.parametrize("missing", ["config", "events"])
def test_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, example_config_path: Path, missing: str
) -> None:
    nowhere = str(tmp_path / "nowhere.json")
    config = nowhere if missing == "config" else str(example_config_path)
    events = nowhere if missing == "events" else write_events(tmp_path, completion("m", 1))
    code, out, err = run(
        capsys, "price", "--config", config, "--plan", "starter", "--events", events
    )
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert f"cannot read {missing}" in err
    assert "nowhere.json" in err
    assert "No such file or directory" in err


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "check-config", str(tmp_path / "absent.json"))
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert "cannot read configuration" in err and "absent.json" in err


def test_missing_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["price", "--plan", "starter"])
    assert caught.value.code == EXIT_BAD_INPUT
    assert "--config" in capsys.readouterr().err


def test_events_that_are_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"type": "llm.completion", "properties": {"input_tokens": 1, "n": "\xe9"}}\n'
    )
    code, out, err = run(
        capsys,
        "price",
        *("--config", write_config(tmp_path, small_config())),
        *("--plan", "starter", "--events", str(events)),
    )
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert err.startswith("tallyray price: ")


def test_config_that_is_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "tallyray.json"
    path.write_bytes(
        json.dumps(small_config(name="Caf\u00e9"), ensure_ascii=False).encode("latin-1")
    )
    code, out, err = run(capsys, "check-config", str(path))
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert err.startswith("tallyray check-config: ")


def test_config_with_an_array_for_a_currency(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(tmp_path, small_config(currency=["USD"]))
    code, out, err = run(capsys, "check-config", config)
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert "plans[0].currency" in err
