"""Responses: the hot routes' direct serialization, and the one error shape.

FastAPI validates a returned model against the route's response model before serializing it.
The hot routes build their replies from the store or from validated requests, so they
serialize directly; their annotations still describe the response in the OpenAPI document.

Every error leaves the server as ``{"error": {"code": ..., "message": ...}}``; the FastAPI
exception handlers and the hot path (server/hotpath.py) both answer through
:func:`response_for_exception`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.requests import ClientDisconnect

from crucible.errors import (
    ConflictError,
    Error,
    InternalError,
    InvalidRequestError,
    RateLimitedError,
    ServerUnavailableError,
    StoreUnavailableError,
)

__all__ = [
    "ANSWERED",
    "STORE_DOWN",
    "error_response",
    "model_response",
    "response_for_exception",
    "validation_message",
]

log = logging.getLogger("crucible.server")


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(
        content=model.model_dump_json(exclude_none=True),
        status_code=status_code,
        media_type="application/json",
    )


def error_response(err: Error) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else None
    if isinstance(err, RateLimitedError):
        # Whole seconds (RFC 9110), rounded up so a client that waits them is let in.
        headers = {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))}
    elif isinstance(err, ServerUnavailableError):
        headers = {"Retry-After": "1"}
    return JSONResponse(err.to_wire(), status_code=err.http_status, headers=headers)


# The store cannot be reached (restarting, failing over, out of connections): nothing the
# client did, and a retry a moment later may well succeed.
STORE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)
# Exceptions answered with a client error or a 503 (response_for_exception), not a 500: the
# app handles them as it handles crucible errors. Left to the handler of ``Exception``,
# Starlette re-raises after answering, and the HTTP server logged a whole traceback for each
# (every health check during a store outage).
ANSWERED = (
    *STORE_DOWN,
    ValidationError,
    DataError,
    IntegrityError,
    OverflowError,
    ClientDisconnect,
)
# PostgreSQL's "this transaction lost to a concurrent one" (deadlock_detected,
# serialization_failure): the store is well, the request was rolled back.
_LOST_TO_CONCURRENT = ("40P01", "40001")
# A unique key or a reference another transaction took or removed first (PostgreSQL's
# unique_violation and foreign_key_violation; SQLite's words). Other integrity errors (a
# NOT NULL column left empty) are the server's own mistakes: a 500.
_TAKEN = ("23505", "23503")
_TAKEN_WORDS = re.compile(r"UNIQUE constraint failed|FOREIGN KEY constraint failed")


def _lost_to_concurrent(exc: Exception) -> bool:
    """Whether the store refused ``exc``'s transaction for what a concurrent one did."""
    if isinstance(exc, IntegrityError):
        state = getattr(exc.orig, "sqlstate", None)
        return state in _TAKEN if state else bool(_TAKEN_WORDS.search(str(exc.orig)))
    if isinstance(exc, OperationalError):
        return getattr(exc.orig, "sqlstate", None) in _LOST_TO_CONCURRENT
    return False


# ... except a store that is full (SQLite's words, PostgreSQL's): that waits for its operator.
_FULL = re.compile(r"database or disk is full|No space left on device|DiskFull", re.IGNORECASE)


def validation_message(errors: Sequence[Any]) -> str:
    """A pydantic error list as one line that names the fields."""
    parts = []
    for e in list(errors)[:5]:
        if e.get("type") == "json_invalid":  # loc ("body", offset): not a field
            why = str(e.get("ctx", {}).get("error") or "it does not parse")
            at = [x for x in e.get("loc", ()) if isinstance(x, int)]
            where = f" at character {at[0]}" if at else ""
            return f"the request body is not valid JSON ({why}{where}): send a JSON object"
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = str(e.get("msg", "invalid"))
        # pydantic prefixes a validator's own words ("Value error, secret key '1A' is ..."):
        # the reader wants only the words.
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{loc or 'body'}: {msg}")
    more = len(errors) - 5
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def response_for_exception(exc: Exception) -> JSONResponse:
    """The error response for anything a handler raised; unexpected exceptions are logged and
    answered 500 without details."""
    if isinstance(exc, Error):
        return error_response(exc)
    if isinstance(exc, ValidationError):
        return error_response(InvalidRequestError(validation_message(exc.errors())))
    if isinstance(exc, DataError):
        # The store refused a value the client sent (e.g. PostgreSQL text cannot hold NUL).
        detail = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        return error_response(
            InvalidRequestError(f"a value in the request cannot be stored: {detail}")
        )
    if isinstance(exc, OverflowError):
        # A number past what the store holds that no bound caught first (the wire models
        # bound every integer; this is the net under them).
        log.warning("refused a value too large to store", exc_info=exc)
        return error_response(
            InvalidRequestError("a number in the request is too large; integers go up to 2**53")
        )
    if _lost_to_concurrent(exc):
        # Two requests at once made or changed the same thing (one name, one key), and the
        # store kept the first: what this one saw was stale. Rolled back whole.
        first = str(exc).splitlines()[0][:200]
        log.info("a request lost to a concurrent one (%s); answered 409", first)
        return error_response(
            ConflictError(
                "another request changed the same thing at the same moment, and this one was "
                "undone (nothing of it was kept); look at what is there now, then retry"
            )
        )
    if isinstance(exc, STORE_DOWN):
        first = str(exc).splitlines()[0][:200]
        if _FULL.search(first):
            # Not an outage that passes by itself: the operator must make room.
            log.error("the store is full (%s); answered 503: free disk space", first)
            return error_response(
                StoreUnavailableError(
                    "the exchange's database or its disk is full, so nothing can be written; "
                    "its operator must free space (reads still work)"
                )
            )
        log.warning("the store did not answer (%s); answered 503", first)
        return error_response(
            StoreUnavailableError(
                "the exchange's database is not answering right now (restarting or failing "
                "over?); retry in a moment"
            )
        )
    if isinstance(exc, ClientDisconnect):
        # The client went away before its body was sent: nothing of ours failed, and no one
        # reads the answer.
        log.info("the client closed the connection before sending its whole body")
        return error_response(
            InvalidRequestError("the connection closed before the request's body was sent")
        )
    log.error("internal error", exc_info=exc)
    return error_response(InternalError(f"internal server error ({type(exc).__name__})"))
