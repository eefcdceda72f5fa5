"""``/openapi.json``: the routes FastAPI knows, with the bodies of :mod:`tallyray.serve.schemas`
and the one error shape on every operation.

``python -m tallyray.serve.openapi`` prints the document (``make openapi`` writes it to
``docs/openapi.json``; a test fails when that file is stale).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tallyray import __version__
from tallyray.serve import schemas
from tallyray.serve.routes import ROUTERS

__all__ = ["DESCRIPTION", "contract", "document"]

DESCRIPTION = (
    "Real-time metering and billing. Authenticate with `Authorization: Bearer trk_live_…` "
    "or `trk_test_…`; the key's environment scopes every object, and its scopes (`ingest`, "
    "`read`, `manage`) what it may call. Every `POST` accepts an `Idempotency-Key`. Errors "
    'have one shape: `{"error": {"type", "message", "details": [{"where", "message"}]}}`.'
)

REF = "#/components/schemas/{model}"

ERRORS: dict[int, str] = {
    400: "A malformed request (a header or a URL that cannot be read).",
    401: "No key, or an unknown, revoked or expired key.",
    403: "The key lacks the scope this call needs.",
    404: "No such object in the key's environment.",
    409: "The request contradicts stored state, or reuses an Idempotency-Key.",
    413: "More than 10,000 events, or a body over 16 MiB.",
    422: "Invalid input: `details` says where and what to fix.",
    429: "Over the key's rate limit; `Retry-After` says when to retry.",
    503: "The store or a shard is unavailable; `Retry-After` says when to retry.",
}

MEDIA: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("get", "/metrics"): ("text/plain", {"type": "string"}),
    ("get", "/v1/invoices/{invoice_id}.pdf"): (
        "application/pdf",
        {"type": "string", "format": "binary"},
    ),
    ("get", "/v1/invoices/{invoice_id}.html"): ("text/html", {"type": "string"}),
    ("get", "/v1/simulations/{simulation_id}/result.csv"): ("text/csv", {"type": "string"}),
    ("get", "/v1/simulations/{simulation_id}/report.html"): ("text/html", {"type": "string"}),
    ("get", "/v1/credit-notes/{note_id}.pdf"): (
        "application/pdf",
        {"type": "string", "format": "binary"},
    ),
}
"""Answers that are not JSON."""


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorResponse": schemas.ErrorResponse}
    for op in schemas.OPERATIONS.values():
        for model in (op.request, *op.responses.values()):
            if model is not None:
                found[model.__name__] = model
    return list(found.values())


def _components() -> dict[str, Any]:
    _, top = models_json_schema(
        [(m, "validation" if _is_request(m) else "serialization") for m in _models()],
        ref_template=REF,
    )
    return dict(top.get("$defs", {}))


def _is_request(model: type[BaseModel]) -> bool:
    return any(op.request is model for op in schemas.OPERATIONS.values())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _request_schema(method: str, path: str, model: type[BaseModel]) -> dict[str, Any]:
    if (method, path) == ("post", "/v1/events"):
        # A bare JSON array, or {"events": [...]}.
        return {"anyOf": [{"type": "array", "items": _ref(schemas.Event)}, _ref(model)]}
    return _ref(model)


def _describe(doc: dict[str, Any]) -> dict[str, Any]:
    """Put the bodies and the errors on every operation."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components.update(_components())
    error = {"application/json": {"schema": _ref(schemas.ErrorResponse)}}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            spec = schemas.OPERATIONS.get((method, path))
            responses: dict[str, Any] = op.setdefault("responses", {})
            media = MEDIA.get((method, path))
            if spec is not None and spec.request is not None:
                content = {
                    "application/json": {"schema": _request_schema(method, path, spec.request)}
                }
                if path == "/v1/events":
                    content["application/cloudevents-batch+json"] = {
                        "schema": {"type": "array", "items": {"type": "object"}}
                    }
                op["requestBody"] = {"required": spec.request_required, "content": content}
            if spec is not None and spec.responses:
                for status in [s for s in responses if s.startswith("2")]:
                    if int(status) not in spec.responses:
                        del responses[status]
                for code, model in spec.responses.items():
                    responses[str(code)] = {
                        "description": responses.get(str(code), {}).get("description") or "Success",
                        "content": {"application/json": {"schema": _ref(model)}},
                    }
            elif media is not None:
                for status in [s for s in responses if s.startswith("2")]:
                    responses[status] = {
                        "description": "Success",
                        "content": {media[0]: {"schema": media[1]}},
                    }
            for code, text in ERRORS.items():
                responses[str(code)] = {"description": text, "content": error}
    return doc


def contract(app: FastAPI) -> None:
    """Serve the described document at ``/openapi.json`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _describe(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document() -> dict[str, Any]:
    """The whole API's document, without a server (what ``make openapi`` writes)."""
    app = FastAPI(title="Tallyray", version=__version__, description=DESCRIPTION)
    for router in ROUTERS:
        app.include_router(router)
    contract(app)
    return app.openapi()


def main() -> None:
    json.dump(document(), sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
