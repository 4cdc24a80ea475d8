"""Calls: submit inputs, wait for results, cancel, list."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Response

from crucible.errors import InsufficientCreditError, NotFoundError
from crucible.protocol.calls import (
    CallInfo,
    CallList,
    CallsCreate,
    CallsCreated,
    CallTimeline,
    GroupResults,
    GroupResultsRequest,
)
from crucible.protocol.common import CallState
from crucible.protocol.containers import InputAssignment
from crucible.server.api.deps import Builder, CallMaker, State
from crucible.server.api.responses import model_response
from crucible.server.auth import Principal
from crucible.server.billing.statements import credit_refusal
from crucible.server.services import calls as svc
from crucible.server.services.apps import get_function_row, require_own_app
from crucible.server.services.containers import cancel_call as cancel_and_stop
from crucible.server.services.deployments import forward_call_target
from crucible.server.services.timeline import call_timeline
from crucible.server.state import ServerState
from crucible.server.wakeups import long_poll

router = APIRouter(prefix="/v1", tags=["calls"])


def _finished(state: ServerState, who: Principal, call_id: str) -> CallInfo | None:
    with state.engine.connect() as conn:
        info = svc.get_call(conn, who, call_id)
    return info if info.state not in ("queued", "running") else None


@router.post("/functions/{function_id}/calls", status_code=201)
async def create_calls(
    function_id: str, req: CallsCreate, who: CallMaker, state: State
) -> CallsCreated:
    """Accept inputs durably (committed before this answers). With ``wait_s`` and a single
    input, wait up to that long for the result. A container token calls only the functions
    of its own app (a function calling another), billed to its account like any call."""
    state.limits.take(state.limits.submit, who)
    created = await submit_calls(function_id, req, who, state)
    return model_response(created, 201)  # type: ignore[return-value]


# A refusal for work sent to another account's endpoint or model: the owner's own refusal
# names its account and balance, which are not its callers' business.
_OWNER_WITHOUT_CREDIT = (
    "the owner of this endpoint has no credit left to run it, so requests are refused until "
    "the exchange's operator grants it credit; nothing was charged to you"
)


def check_credit(
    state: ServerState, who: Principal, now_ms: int, *, on_behalf: bool = False
) -> None:
    """Refuse new work of an account without credit (when credits are required).
    ``on_behalf``: the work is a request that anyone may have sent to ``who``'s web endpoint
    or model, and the refusal does not describe ``who``'s account."""
    if state.settings.require_credits:
        blocked = state.leader.credit_blocked.get(who.account_id)
        if blocked is None:
            with state.engine.connect() as conn:
                blocked = credit_refusal(conn, state.credit.checked, who.account_id, now_ms)
        if blocked is not None:
            raise InsufficientCreditError(_OWNER_WITHOUT_CREDIT if on_behalf else blocked)


def _reserved_tier(state: ServerState, who: Principal, function_id: str) -> bool:
    """Whether ``who``'s function runs in its reservations (a missing one: no)."""
    with state.engine.connect() as conn:
        try:
            fn = get_function_row(conn, who, function_id)
        except NotFoundError:
            return False
    return fn.spec.market.tier == "reserved"


async def submit_calls(
    function_id: str,
    req: CallsCreate,
    who: Principal,
    state: ServerState,
    *,
    on_behalf: bool = False,
) -> CallsCreated:
    """What ``POST /functions/{id}/calls`` does (the job API and web requests submit through
    it too; ``on_behalf``: a web request to ``who``'s endpoint, see :func:`check_credit`)."""
    now = state.clock.now_ms()
    try:
        check_credit(state, who, now, on_behalf=on_behalf)
    except InsufficientCreditError:
        # What was paid for up front still runs: a reserved-tier function's calls run in the
        # account's reservations at no further cost.
        if not _reserved_tier(state, who, function_id):
            raise
    # Idle containers of this function get the first inputs directly (see server/dispatch.py).
    taken = state.dispatcher.take(function_id, len(req.inputs))
    handed: dict[str, list[InputAssignment]] = {}
    committed = False
    try:
        with state.engine.begin() as conn:
            fn = get_function_row(conn, who, function_id)
            require_own_app(who, fn.app_id)  # a container: its own app's functions only
            if fn.app_state != "running":
                # A superseded version of a deployment: the call goes to the current one.
                fn = (
                    forward_call_target(
                        conn, who, fn, now, max_pools=state.settings.max_class_pools
                    )
                    or fn
                )
            ids = svc.create_calls(
                conn,
                who,
                fn,
                req,
                now,
                state.settings.inline_payload_max_bytes,
                handoff=[(p.container_id, p.want) for p in taken if fn.id == function_id],
                timeout_s=fn.spec.timeout_s,
                handed=handed,
            )
        committed = True
    finally:
        for parked in taken:  # woken either way: with inputs, or to re-read the store
            if committed:
                given = handed.get(parked.container_id, ())
                parked.handed.extend(given)
                # Slots of its web channel from now, before the worker hears of them.
                state.web.channels.calls_given(parked.container_id, len(given))
            parked.event.set()
    n_handed = 0
    for assignments in handed.values():
        n_handed += len(assignments)
        for a in assignments:
            state.calls.claim_groups[a.call_id] = req.group_id
    state.observations.observe_arrivals(fn.id, len(ids), now)
    if len(ids) > n_handed:
        state.wakeups.work_queued(fn.id)
    result = None
    if req.wait_s > 0 and len(ids) == 1:
        call_id = ids[0]
        result = await long_poll(
            state.wakeups,
            [f"call:{call_id}"],
            lambda: _finished(state, who, call_id),
            req.wait_s,
            checked=True,  # created just now, without yielding: it cannot have finished
        )
    return CallsCreated(call_ids=ids, result=result)


@router.get("/calls/{call_id}/timeline")
def get_timeline(call_id: str, who: Builder, state: State) -> CallTimeline:
    """Queued, scheduled, starting, running, finished: when, and what each phase cost."""
    with state.engine.connect() as conn:
        return call_timeline(conn, who, call_id, state.clock.now_ms())


@router.get("/calls/{call_id}")
async def get_call(
    call_id: str,
    who: CallMaker,
    state: State,
    wait_s: float = Query(default=0.0, ge=0, le=60, allow_inf_nan=False),
) -> CallInfo:
    """A call's state, and its result or error when finished. With ``wait_s``, wait up to
    that long for it to finish."""
    if wait_s > 0:
        done = await long_poll(
            state.wakeups, [f"call:{call_id}"], lambda: _finished(state, who, call_id), wait_s
        )
        if done is not None:
            return model_response(done)  # type: ignore[return-value]
    with state.engine.connect() as conn:
        info = svc.get_call(conn, who, call_id)
    why = state.leader.waiting.get(info.function_id) if info.state == "queued" else None
    if why is not None:
        info = info.model_copy(update={"waiting": why})
    return model_response(info)  # type: ignore[return-value]


@router.post("/calls/{call_id}/cancel")
async def cancel_call(call_id: str, who: CallMaker, state: State) -> CallInfo:
    with state.engine.begin() as conn:
        info, keys = cancel_and_stop(
            conn, who, call_id, state.clock.now_ms(), state.settings.max_infra_requeues
        )
    state.wakeups.notify_many(keys)
    return info


@router.get("/calls")
async def list_calls(
    who: Builder,
    state: State,
    app_id: str | None = None,
    function_id: str | None = None,
    call_state: CallState | None = Query(default=None, alias="state"),
    limit: int = Query(default=50, ge=1, le=1000),
) -> CallList:
    with state.engine.connect() as conn:
        return CallList(
            calls=svc.list_calls(
                conn,
                who,
                app_id=app_id,
                function_id=function_id,
                state=call_state.value if call_state else None,  # a plain str for the driver
                limit=limit,
            )
        )


@router.post("/groups/{group_id}/results")
async def group_results(
    group_id: str, req: GroupResultsRequest, who: CallMaker, state: State
) -> GroupResults:
    """Finished calls of a ``.map`` group, each delivered once; waits up to ``wait_s`` for at
    least one when none is ready and some are outstanding."""

    def read() -> tuple[list[dict[str, Any]], int]:
        with state.engine.begin() as conn:
            return svc.group_results_data(conn, who, group_id, req.limit, req.indices)

    def check() -> tuple[list[dict[str, Any]], int] | None:
        results, outstanding = found = read()
        return found if results or outstanding == 0 or req.indices is not None else None

    found = None
    if req.wait_s > 0:
        found = await long_poll(state.wakeups, [f"group:{group_id}"], check, req.wait_s)
    results, outstanding = found if found is not None else read()
    # Built from the store's rows in the shape of GroupResults; serialized without models.
    body = orjson.dumps({"results": results, "outstanding": outstanding})
    return Response(body, media_type="application/json")  # type: ignore[return-value]
