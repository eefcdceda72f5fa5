"""The contract as a document: ``docs/openapi.json`` is what the code serves (``make
openapi`` rewrites it), and every operation has its bodies and the error shape."""

from __future__ import annotations

import json
from pathlib import Path

from tallyray.serve.openapi import ERRORS, document

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_the_committed_document_is_current() -> None:
    assert json.loads(DOCUMENT.read_text()) == json.loads(json.dumps(document())), (
        "docs/openapi.json is stale: run `make openapi` and commit it"
    )


def test_every_operation_has_its_bodies_and_the_error_shape() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            successes = [s for s in op["responses"] if s.startswith("2")]
            assert successes, where
            for status in successes:
                content = op["responses"][status].get("content")
                assert content, f"{where} {status} has no body schema"
                for media in content.values():
                    assert media["schema"] not in ({}, {"type": "object"}), where
            for status in ERRORS:
                ref = op["responses"][str(status)]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorResponse"}, where
            if method == "post" and "requestBody" not in op:
                # only the POSTs that take no body
                assert path.endswith(
                    (
                        "/revoke",
                        "/resume",
                        "/finalize",
                        "/void",
                        "/mark-paid",
                        "/mark-uncollectible",
                        "/pay",
                        "/collect",
                        "/webhook",
                        "/release",
                        "/enable",
                        "/publish",
                        "/test",
                    )
                ), where
    assert "HTTPValidationError" not in schemas
    assert schemas["QuotaCheck"]["properties"]["customer_id"]["examples"] == ["acme"]


def test_money_is_a_decimal_string_in_the_contract() -> None:
    schemas = document()["components"]["schemas"]
    assert schemas["QuotaAnswer"]["properties"]["cost"]["type"] == "string"
    assert schemas["CreditGrantRequest"]["properties"]["amount"]["type"] == "string"
