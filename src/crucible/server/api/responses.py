"""Responses for the hot routes.

FastAPI validates a returned model against the route's response model before serializing it.
The hot routes build their replies from the store or from validated requests, so they
serialize directly; their annotations still describe the response in the OpenAPI document.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel

__all__ = ["model_response"]


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(
        content=model.model_dump_json(exclude_none=True),
        status_code=status_code,
        media_type="application/json",
    )
