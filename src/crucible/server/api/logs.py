"""Logs: workers send what functions print; builders read and follow it."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.errors import NotFoundError
from crucible.protocol.common import MAX_WIRE_INT
from crucible.protocol.logs import LogBatch, LogPage
from crucible.server.api.deps import Builder, Container, State
from crucible.server.services import logs as svc
from crucible.server.wakeups import long_poll

router = APIRouter(prefix="/v1", tags=["logs"])


@router.post("/containers/{container_id}/logs", status_code=204)
def post_logs(container_id: str, batch: LogBatch, who: Container, state: State) -> None:
    if who.container_id != container_id:
        raise NotFoundError(f"container {container_id} not found")
    batch = svc.within_cap(
        batch, state.containers.log_counts, container_id, state.settings.log_lines_per_container
    )
    if not batch.lines:
        return
    with state.engine.begin() as conn:
        app_id = svc.write_logs(conn, container_id, batch)
    if app_id is not None:
        state.wakeups.notify_many([f"logs:{app_id}"])


@router.get("/apps/{app_id}/logs")
async def get_logs(
    app_id: str,
    who: Builder,
    state: State,
    call_id: str | None = None,
    after: int = Query(default=0, ge=0, le=MAX_WIRE_INT),
    limit: int = Query(default=1000, ge=1, le=10_000),
    wait_s: float = Query(default=0.0, ge=0, le=60, allow_inf_nan=False),
) -> LogPage:
    """Lines after ``after`` (an id), oldest first; with ``wait_s``, wait up to that long for
    new ones (how ``crucible logs --follow`` reads)."""

    def read() -> LogPage:
        with state.engine.connect() as conn:
            return svc.read_logs(
                conn,
                who,
                app_id,
                call_id=call_id,
                after=after,
                limit=limit,
                now_ms=state.clock.now_ms(),
                kept_days=state.settings.retention_logs_days,
            )

    page = read()
    if page.lines or wait_s <= 0:
        return page
    found = await long_poll(
        state.wakeups, [f"logs:{app_id}"], lambda: (read().lines and read()) or None, wait_s
    )
    return found or page
