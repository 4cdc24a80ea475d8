"""The OpenAPI description, made to tell the truth about errors.

FastAPI lists a 422 "Validation Error" on every route; this server answers a malformed
request with 400 and ``{"error": {"code": ..., "message": ...}}`` (see server/app.py), and can
also answer 401, 403, 404, 409, 413 and 429, each in that one error shape. This module
replaces the framework's error responses with the real ones, so that generated clients and
schemathesis see what the server does. The hot routes (server/hotpath.py) are served outside
FastAPI but described by the same route functions, so they get the same description.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

__all__ = ["ERROR_SCHEMA", "install_openapi"]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "a stable code (docs/reference/errors.md)",
                },
                "message": {"type": "string", "description": "what went wrong, what to do"},
            },
        }
    },
}

_REF = {"$ref": "#/components/schemas/Error"}

_WHEN: dict[int, str] = {
    400: "The request is malformed or out of range: a parameter, the body or a value in it "
    "(code invalid_request, or invalid_gpu / invalid_resources).",
    401: "No token, or a token the server does not know or has revoked (unauthorized).",
    402: "The account has no credit left or reached its daily cap (insufficient_credit).",
    403: "The token is valid but its scope may not use this route (forbidden).",
    404: "The object does not exist or belongs to another account (not_found).",
    405: "The route does not take this method; the Allow header lists those it takes.",
    409: "The request conflicts with the object's current state (conflict).",
    413: "The request body is over the server's limit (payload_too_large).",
    422: "No offer on the market matches the terms asked (market_refused).",
    429: "Too many requests from this token; retry after the Retry-After header's seconds.",
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    429: {
        "Retry-After": {
            "schema": {"type": "integer"},
            "description": "seconds to wait before retrying",
        }
    },
}

# Errors only some routes can answer, besides those every route with a token can.
_EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/functions/{function_id}/calls"): (402,),
    ("post", "/v1/jobs/{deployment}/{function}/run"): (402,),
    ("post", "/v1/jobs/{deployment}/{function}/runsync"): (402,),
    ("post", "/v1/reservations"): (402, 422),
}

# Unauthenticated routes answer no error of their own.
_PUBLIC = {"/healthz"}


def _error_response(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _WHEN[status],
        "content": {"application/json": {"schema": _REF}},
    }
    if status in _HEADERS:
        out["headers"] = _HEADERS[status]
    return out


def describe_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the framework's validation answers replaced by the server's errors."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            responses.pop("422", None)
            if path in _PUBLIC:
                continue
            statuses = {400, 401, 403, 404, 409, 429, *_EXTRA.get((method, path), ())}
            if "requestBody" in op:
                statuses.add(413)
            for status in sorted(statuses):
                responses[str(status)] = _error_response(status)
    return spec


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the description with the real error answers."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
