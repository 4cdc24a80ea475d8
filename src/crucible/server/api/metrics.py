"""Prometheus metrics: ``GET /metrics`` with an admin token (a scraper's bearer token)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from crucible.errors import PermissionDeniedError
from crucible.server.api.deps import Builder, State

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(who: Builder, state: State) -> PlainTextResponse:
    if not who.is_admin:
        raise PermissionDeniedError(
            "metrics are the operator's: scrape with an admin token (Authorization: Bearer)"
        )
    with state.engine.connect() as conn:
        text = state.metrics.render(conn)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
