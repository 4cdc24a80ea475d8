"""Health: the one route that needs no token."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from crucible.server.api.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(state: State) -> dict[str, str]:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}
