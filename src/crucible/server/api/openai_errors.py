"""Errors of the OpenAI API (``/openai/v1``) in OpenAI's shape.

OpenAI's clients read ``{"error": {"message", "type", "param", "code"}}`` and map the status
to an exception class (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError). Every
error the control plane raises under ``/openai/`` is rewritten here from Crucible's shape
(``{"error": {"code", "message"}}``) so that those clients understand it. Running out of
credit is a 429 with code ``insufficient_quota``, as OpenAI answers it.
"""

from __future__ import annotations

import orjson
from fastapi.responses import JSONResponse

from crucible.errors import bounded

__all__ = ["OPENAI_PREFIX", "openai_error", "openai_too_large", "to_openai_shape"]

OPENAI_PREFIX = "/openai/"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {"not_found": "model_not_found", "unauthorized": "invalid_api_key"}


def openai_too_large(limit: int) -> str:
    """Why a model request's body is refused for its size (CRUCIBLE_OPENAI_MAX_REQUEST_BYTES,
    which is below the API's own limit)."""
    return (
        f"the request body is over {limit} bytes, the most a model request may carry "
        "(CRUCIBLE_OPENAI_MAX_REQUEST_BYTES): send a shorter prompt"
    )


def openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": bounded(message), "type": kind, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def to_openai_shape(response: JSONResponse) -> JSONResponse:
    """The same error in OpenAI's shape (status and headers kept; no credit is a 429)."""
    try:
        err = orjson.loads(bytes(response.body))["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return response
    if "type" in err:
        return response  # already shaped
    status = response.status_code
    code = str(err.get("code") or "error")
    if code == "insufficient_credit":
        status, code = 429, "insufficient_quota"
    out = openai_error(status, str(err.get("message", "")), _CODES.get(code, code))
    for name in ("retry-after", "www-authenticate"):
        if name in response.headers:
            out.headers[name] = response.headers[name]
    return out
