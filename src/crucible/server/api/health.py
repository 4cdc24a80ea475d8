"""Health: the one route that needs no token."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from crucible.server.api.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(state: State) -> dict[str, str]:
    """Ok once the store answers. In a worker thread: while every pooled connection is in
    use the check waits for one, and on the event loop that would hold up every request."""

    def store_answers() -> None:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    await run_in_threadpool(store_answers)
    return {"status": "ok"}
