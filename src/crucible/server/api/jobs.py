"""The job API: call a deployed function from any language, with JSON.

``POST /v1/jobs/{deployment}/{function}/run`` queues a job and answers at once;
``.../runsync`` waits for it (up to ``wait_s``); ``GET /v1/jobs/{id}`` says where it is;
``GET /v1/jobs/{id}/stream`` streams its state changes as JSON lines until it ends;
``POST /v1/jobs/{id}/cancel`` cancels it. A job is a call: it is retried, metered and billed
like any other, and appears in ``crucible calls``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from crucible.errors import InvalidRequestError
from crucible.protocol import json_payload
from crucible.protocol.apps import FunctionCreate
from crucible.protocol.calls import CallInfo, CallsCreate, InputItem
from crucible.protocol.common import ErrorInfo, Payload
from crucible.protocol.jobs import JobInput, JobStatus
from crucible.server.api.calls import submit_calls
from crucible.server.api.deps import Builder, State
from crucible.server.auth import Principal
from crucible.server.services import calls as calls_svc
from crucible.server.services.containers import cancel_call as cancel_and_stop
from crucible.server.services.deployments import current_function
from crucible.server.state import ServerState
from crucible.server.wakeups import long_poll

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")


def _status(state: ServerState, info: CallInfo) -> JobStatus:
    output = None
    error = info.error
    if info.state == "succeeded" and info.result is not None:
        if info.result.data is not None:
            raw = base64.b64decode(info.result.data)
        else:
            assert info.result.ref is not None
            raw = state.blobs.get(info.result.ref)
        if json_payload.is_json(raw):
            output = json_payload.decode(raw)
        else:  # submitted by the SDK: its result is for the SDK (never unpickled here)
            error = ErrorInfo(
                code="not_json", message="this call's result is not JSON: read it with the SDK"
            )
    return JobStatus(
        id=info.id,
        status=info.state,
        output=output,
        error=error,
        created_ms=info.created_ms,
        started_ms=info.started_ms,
        finished_ms=info.finished_ms,
        exec_ms=info.exec_ms,
        cost_micros=info.cost_micros,
    )


def _get(state: ServerState, who: Principal, job_id: str) -> CallInfo:
    with state.engine.connect() as conn:
        return calls_svc.get_call(conn, who, job_id)


async def _submit(
    deployment: str, function: str, req: JobInput, who: Principal, state: ServerState, wait: float
) -> JobStatus:
    state.limits.take(state.limits.submit, who)
    with state.engine.connect() as conn:
        fn = current_function(conn, who, deployment, function)
    _job_callable(fn.spec, deployment, function)
    try:
        raw = json_payload.encode(req.call_args())
    except TypeError as exc:  # JSON orjson cannot write back, e.g. integers beyond 64 bits
        raise InvalidRequestError(f"the input is not JSON: {exc}") from None
    if len(raw) > state.settings.inline_payload_max_bytes:
        raise InvalidRequestError(
            f"the input is {len(raw)} bytes; the job API takes at most "
            f"{state.settings.inline_payload_max_bytes} (use the SDK for larger inputs)"
        )
    created = await submit_calls(
        fn.id,
        CallsCreate(
            inputs=[InputItem(args=Payload.inline(raw), idempotency_key=req.idempotency_key)],
            wait_s=wait,
        ),
        who,
        state,
    )
    info = created.result or _get(state, who, created.call_ids[0])
    return _status(state, info)


def _job_callable(spec: FunctionCreate, deployment: str, function: str) -> None:
    """Refuse, before any container starts, a function a job cannot call: a job is one
    JSON input to one plain function and one JSON result (they ran, and failed with the
    worker's traceback)."""
    if spec.web is not None:
        raise InvalidRequestError(
            f"{function} is a web endpoint: call it over HTTP at "
            f"/web/ACCOUNT/{deployment}/{function}/ (ACCOUNT: your account's name), not "
            "through the job API"
        )
    if spec.class_params is not None:
        raise InvalidRequestError(
            f"{function} is an @app.cls() class: the job API calls plain functions; call its "
            f"methods from Python with crucible.Cls.from_name({deployment!r}, {function!r})"
        )
    if spec.is_generator:
        raise InvalidRequestError(
            f"{function} is a generator: a job has one result; read what it yields from "
            f"Python with crucible.Function.from_name({deployment!r}, {function!r})"
            ".remote_gen(...)"
        )


@router.post("/{deployment}/{function}/run", status_code=201)
async def run(
    deployment: str, function: str, req: JobInput, who: Builder, state: State
) -> JobStatus:
    """Queue a job; answers at once with its id."""
    return await _submit(deployment, function, req, who, state, 0.0)


@router.post("/{deployment}/{function}/runsync")
async def runsync(
    deployment: str,
    function: str,
    req: JobInput,
    who: Builder,
    state: State,
    wait_s: float = Query(default=60.0, gt=0, le=300, allow_inf_nan=False),
) -> JobStatus:
    """Run a job and wait for it up to ``wait_s``; a job still going comes back with its
    status (poll ``GET /v1/jobs/{id}``)."""
    job = await _submit(deployment, function, req, who, state, min(wait_s, 60.0))
    if job.status in _TERMINAL or wait_s <= 60:
        return job
    info = await _wait(state, who, job.id, wait_s - 60.0)
    return _status(state, info)


async def _wait(state: ServerState, who: Principal, job_id: str, wait_s: float) -> CallInfo:
    def finished() -> CallInfo | None:
        info = _get(state, who, job_id)
        return info if info.state in _TERMINAL else None

    done = await long_poll(state.wakeups, [f"call:{job_id}"], finished, wait_s)
    return done or _get(state, who, job_id)


@router.get("/{job_id}")
async def status(
    job_id: str,
    who: Builder,
    state: State,
    wait_s: float = Query(default=0.0, ge=0, le=60, allow_inf_nan=False),
) -> JobStatus:
    """Where the job is; with ``wait_s``, wait up to that long for it to end."""
    info = await _wait(state, who, job_id, wait_s) if wait_s else _get(state, who, job_id)
    return _status(state, info)


@router.get("/{job_id}/stream")
async def stream(job_id: str, who: Builder, state: State) -> StreamingResponse:
    """The job's state changes as JSON lines (``application/x-ndjson``), the last one when
    it ends, with its output."""
    first = _get(state, who, job_id)  # 404 before the stream starts

    async def lines() -> AsyncIterator[bytes]:
        info = first
        last: Any = None
        while True:
            job = _status(state, info)
            if job.status != last:
                last = job.status
                yield orjson.dumps(job.model_dump(mode="json")) + b"\n"
            if job.status in _TERMINAL:
                return

            def changed(seen: str = job.status) -> CallInfo | None:
                now = _get(state, who, job_id)
                return now if now.state != seen else None

            info = await long_poll(state.wakeups, [f"call:{job_id}"], changed, 2.0) or info

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/{job_id}/cancel")
async def cancel(job_id: str, who: Builder, state: State) -> JobStatus:
    with state.engine.begin() as conn:
        info, keys = cancel_and_stop(
            conn, who, job_id, state.clock.now_ms(), state.settings.max_infra_requeues
        )
    state.wakeups.notify_many(keys)
    return _status(state, info)
