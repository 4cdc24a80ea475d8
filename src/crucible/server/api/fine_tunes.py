"""Fine-tuning jobs: record, list, show (with the loss so far), cancel (the CLI's `crucible
fine-tune`). The job itself is a call of the account's trainer app; services/fine_tunes.py."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.protocol.fine_tunes import FineTuneCreate, FineTuneInfo
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.services import fine_tunes as svc
from crucible.server.services import request_keys
from crucible.server.services.containers import cancel_call

router = APIRouter(prefix="/v1", tags=["fine-tunes"])


@router.post("/fine-tunes", status_code=201)
def create(req: FineTuneCreate, who: Builder, state: State, key: RequestKey = None) -> FineTuneInfo:
    keyed = request_keys.keyed(who, key, "POST /v1/fine-tunes", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = svc.create_fine_tune(conn, who, req, now)
        request_keys.keep(conn, keyed, 201, info)
    return info


@router.get("/fine-tunes")
def list_fine_tunes(who: Builder, state: State) -> list[FineTuneInfo]:
    with state.engine.begin() as conn:  # registers the adapters of jobs that succeeded
        return svc.list_fine_tunes(conn, who, state.clock.now_ms())


@router.get("/fine-tunes/{ft_id}")
def get_fine_tune(ft_id: str, who: Builder, state: State) -> FineTuneInfo:
    with state.engine.begin() as conn:
        return svc.get_fine_tune(conn, who, ft_id, state.clock.now_ms())


@router.post("/fine-tunes/{ft_id}/cancel")
def cancel(ft_id: str, who: Builder, state: State) -> FineTuneInfo:
    """Cancel the job's call (its container is stopped; checkpoints already committed to the
    model's volume stay)."""
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        job = svc.get_fine_tune(conn, who, ft_id, now)
        if job.state in ("queued", "running"):
            _, keys = cancel_call(conn, who, job.call_id, now, state.settings.max_infra_requeues)
            state.wakeups.notify_many(keys)
        return svc.get_fine_tune(conn, who, ft_id, now)
