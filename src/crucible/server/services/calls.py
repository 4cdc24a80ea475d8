"""Calls: accepting inputs, handing them to containers, recording results, retries.

State machine (see docs/concepts.md)::

    queued ──claim──▶ running ──output──▶ succeeded
      ▲                 │  ├──raised / crashed, retries left──▶ queued (after backoff)
      │                 │  ├──raised / crashed, none left─────▶ failed
      │                 │  ├──past timeout, none left─────────▶ timed_out
      └──host lost──────┘  └──cancel──────────────────────────▶ cancelled

Every function here runs inside the caller's transaction and returns the wake-up keys to
notify once that transaction has committed (never before: a woken waiter must find the row).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    case,
    func,
    insert,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crucible.core.metering import MS_PER_HOUR
from crucible.core.scheduling import retry_delay_ms
from crucible.errors import (
    ConflictError,
    ContainerExitedError,
    FunctionTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from crucible.protocol.calls import CallInfo, CallsCreate, GroupResults
from crucible.protocol.common import TERMINAL_STATES, CallState, ErrorInfo, Payload, RetryPolicy
from crucible.protocol.containers import InputAssignment, OutputItem
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal
from crucible.server.services.attempts import (
    RUN_SLACK_MS,
    attempt_cost,
    container_rate,
    record_ended_attempt,
    reported_run_ms,
)
from crucible.server.services.blobs import require_blob
from crucible.server.services.function_specs import SPECS
from crucible.server.store.bulk import execute_many
from crucible.server.store.tables import calls, containers, functions

if TYPE_CHECKING:  # services/apps.py imports this module
    from crucible.server.services.apps import FunctionRow

__all__ = [
    "call_info",
    "cancel_call",
    "cancel_queued_calls_of_app",
    "claim_inputs",
    "create_calls",
    "fail_queued_calls",
    "get_call",
    "group_results",
    "list_calls",
    "list_calls_by_range",
    "made_by",
    "record_outputs",
    "record_timeout",
    "requeue_calls_of_container",
    "requeue_preempted_calls",
]

_CALL_COLUMNS = (
    calls.c.id,
    calls.c.function_id,
    calls.c.app_id,
    calls.c.state,
    calls.c.attempts,
    calls.c.created_ms,
    calls.c.started_ms,
    calls.c.finished_ms,
    calls.c.group_id,
    calls.c.idx,
    calls.c.output,
    calls.c.output_ref,
    calls.c.output_size,
    calls.c.error,
    calls.c.exec_ms,
    calls.c.cost_micros,
    calls.c.preemptions,
    calls.c.tick_ms,
)


# Statements on the hot path are built once: building and cache-keying a SQLAlchemy statement
# costs several times more than executing a prebuilt one.
_SEL_CALL = select(*_CALL_COLUMNS).where(
    calls.c.id == bindparam("b_id"), calls.c.account_id == bindparam("b_account")
)
# A container token reads only the calls its container made (a function calling another).
_SEL_CALL_MADE_BY = _SEL_CALL.where(calls.c.caller_container_id == bindparam("b_caller"))
_SEL_IDEMPOTENT = select(calls.c.id).where(
    calls.c.account_id == bindparam("b_account"),
    calls.c.idempotency_key == bindparam("b_key"),
)
_INSERT_COLUMNS = (
    "id",
    "account_id",
    "app_id",
    "function_id",
    "group_id",
    "idx",
    "state",
    "attempts",
    "infra_requeues",
    "preemptions",
    "input",
    "input_ref",
    "input_size",
    "output_size",
    "idempotency_key",
    "container_id",
    "caller_container_id",
    "created_ms",
    "started_ms",
    "deadline_ms",
    "next_attempt_ms",
    "delivered",
)
_INSERT_CALLS = insert(calls).values({name: bindparam(name) for name in _INSERT_COLUMNS})
_SEL_CLAIMABLE = (
    select(
        calls.c.id,
        calls.c.attempts,
        calls.c.input,
        calls.c.input_ref,
        calls.c.input_size,
        calls.c.group_id,
    )
    .where(
        calls.c.function_id == bindparam("b_fn"),
        calls.c.state == "queued",
        calls.c.next_attempt_ms <= bindparam("b_now"),
    )
    .order_by(calls.c.id)
    .limit(bindparam("b_n"))
)
# PostgreSQL claims in one statement (one round trip instead of a SELECT and an UPDATE): the
# oldest queued rows nobody else holds are locked and updated, and come back by RETURNING. The
# server-side deadline allows for the whole batch the worker will run one after another.
_PICKED = (
    select(calls.c.id)
    .where(
        calls.c.function_id == bindparam("b_fn"),
        calls.c.state == "queued",
        calls.c.next_attempt_ms <= bindparam("b_now"),
    )
    .order_by(calls.c.id)
    .limit(bindparam("b_n"))
    .with_for_update(skip_locked=True)
    .cte("picked")
)
_CLAIM_RETURNING = (
    update(calls)
    .where(calls.c.id == _PICKED.c.id)
    .values(
        state="running",
        container_id=bindparam("b_container"),
        attempts=calls.c.attempts + 1,
        started_ms=bindparam("b_now"),
        # One timeout per input for a sequential worker (b_seq 1), one for all otherwise.
        deadline_ms=bindparam("b_now")
        + bindparam("b_timeout_ms")
        * (
            bindparam("b_seq") * (select(func.count()).select_from(_PICKED).scalar_subquery() - 1)
            + 1
        ),
    )
    .returning(
        calls.c.id,
        calls.c.attempts,
        calls.c.input,
        calls.c.input_ref,
        calls.c.input_size,
        calls.c.group_id,
    )
)
_CLAIM = (
    update(calls)
    .where(calls.c.id.in_(bindparam("b_ids", expanding=True)), calls.c.state == "queued")
    .values(
        state="running",
        container_id=bindparam("b_container"),
        attempts=calls.c.attempts + 1,
        started_ms=bindparam("b_now"),
        deadline_ms=bindparam("b_deadline"),
    )
)
# The time since a running call was handed over (never below 0), and whether the run time
# a worker reported for it is longer than that by more than RUN_SLACK_MS.
_ELAPSED = case(
    (bindparam("b_now", type_=BigInteger) < calls.c.started_ms, 0),
    else_=bindparam("b_now", type_=BigInteger) - calls.c.started_ms,
)
_OVERSTATED = calls.c.started_ms.is_not(None) & (
    bindparam("b_exec_ms", type_=BigInteger)
    > bindparam("b_now", type_=BigInteger) - calls.c.started_ms + RUN_SLACK_MS
)
_SUCCEED = (
    update(calls)
    .where(
        calls.c.id == bindparam("b_id"),
        calls.c.state == "running",
        calls.c.container_id == bindparam("b_container"),
        calls.c.attempts == bindparam("b_attempt"),
    )
    .values(
        state="succeeded",
        finished_ms=bindparam("b_now"),
        output=bindparam("b_output"),
        output_ref=bindparam("b_output_ref"),
        output_size=bindparam("b_output_size"),
        # The reported run time is at most the time since the hand-over (a host reported
        # any run time it liked, and the renter read it and its cost): services/attempts.py.
        exec_ms=case((_OVERSTATED, _ELAPSED), else_=bindparam("b_exec_ms")),
        # Carried across attempts: what preempted or failed attempts cost is kept.
        cost_micros=func.coalesce(calls.c.cost_micros, 0)
        + case(
            (_OVERSTATED, _ELAPSED * bindparam("b_rate", type_=BigInteger) // MS_PER_HOUR),
            else_=bindparam("b_cost"),
        ),
        error=null(),
    )
)
# Containers that may still be handed inputs: running ones. Read FOR SHARE on PostgreSQL, so a
# concurrent end of one (which requeues its running calls) waits for the hand-off to commit
# and then requeues the handed calls too, instead of missing them.
_SEL_LIVE = select(containers.c.id).where(
    containers.c.id.in_(bindparam("b_ids", expanding=True)), containers.c.state == "running"
)
_SEL_LIVE_LOCKED = _SEL_LIVE.with_for_update(read=True)
_SEL_GROUPS = select(calls.c.id, calls.c.group_id).where(
    calls.c.id.in_(bindparam("b_ids", expanding=True))
)


def _keys_for_finished(call_id: str, group_id: str | None) -> list[str]:
    keys = [f"call:{call_id}"]
    if group_id:
        keys.append(f"group:{group_id}")
    return keys


def call_info(row: Any) -> CallInfo:
    # From plain data: pydantic validates a dict (in Rust) faster than model_construct builds
    # a model in Python, which matters for the thousands of results of a map.
    return CallInfo.model_validate(call_info_dict(row))


def call_info_dict(row: Any) -> dict[str, Any]:
    """A stored call as the wire's CallInfo, in plain data (for routes that serialize many)."""
    result = None
    if row.state == "succeeded":
        if row.output_ref:
            result = {"ref": row.output_ref, "size": row.output_size}
        elif row.output is not None:
            result = {"data": base64.b64encode(row.output).decode(), "size": row.output_size}
    return {
        "id": row.id,
        "function_id": row.function_id,
        "app_id": row.app_id,
        "state": row.state,
        "attempts": row.attempts,
        "created_ms": row.created_ms,
        "started_ms": row.started_ms,
        "finished_ms": row.finished_ms,
        "group_id": row.group_id,
        "index": row.idx,
        "result": result,
        "error": row.error if row.error and row.state != "succeeded" else None,
        "exec_ms": row.exec_ms,
        "cost_micros": row.cost_micros,
        "preemptions": row.preemptions,
        "tick_ms": row.tick_ms,
    }


def decode_payload(
    conn: Connection, account_id: str, payload: Payload, inline_max: int
) -> tuple[bytes | None, str | None, int]:
    if payload.ref is not None:
        require_blob(conn, account_id, payload.ref)
        return None, payload.ref, payload.size
    if payload.data is None:
        raise InvalidRequestError("a payload needs 'data' (base64) or 'ref' (a blob's sha256)")
    if len(payload.data) > inline_max * 4 // 3 + 4:
        raise PayloadTooLargeError(
            f"an inline payload is limited to {inline_max} bytes; upload larger ones as a blob "
            "and pass its sha256 as 'ref' (the SDK does this by itself)"
        )
    try:
        raw = base64.b64decode(payload.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("payload 'data' is not valid base64") from None
    return raw, None, len(raw)


def create_calls(
    conn: Connection,
    principal: Principal,
    fn: FunctionRow,
    req: CallsCreate,
    now_ms: int,
    inline_max: int,
    *,
    handoff: Sequence[tuple[str, int]] = (),
    timeout_s: float = 0.0,
    handed: dict[str, list[InputAssignment]] | None = None,
) -> list[str]:
    """Accept inputs for a function (``fn`` from apps.get_function_row). Returns their call
    ids, in input order; an input whose idempotency key was seen before returns the earlier
    call's id and creates nothing.

    ``handoff`` lists idle containers of this function as (container id, how many inputs it
    wants): the first new inputs are inserted already running on them (one transaction
    instead of an insert and a claim) and returned in ``handed`` for the caller to pass
    straight to those containers' waiting requests."""
    if fn.app_state != "running":
        if fn.app_state == "deploying":
            raise NotFoundError(f"function {fn.id} belongs to a version not activated yet")
        raise NotFoundError(f"function {fn.id} belongs to a stopped app; start a new run")
    account = principal.account_id
    first_key = req.inputs[0].idempotency_key
    # A batch of a map is created whole or not at all: its first input's key stands for it.
    batch_key = first_key if req.group_id is not None and len(req.inputs) > 1 else None
    if batch_key is not None and _known_key(conn, account, batch_key) is not None:
        return _batch_ids(conn, account, req)
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    keyed: list[int] = []  # positions in rows of inputs with an idempotency key
    seen: dict[str, str] = {}  # keys met earlier in this request
    if handoff and handed is not None:
        # A worker parks for up to its long poll and may die meanwhile (its agent killed):
        # its container is ended as lost, its running calls requeued once. A call handed to it
        # after that would stay running on a stopped container until its timeout.
        sel = _SEL_LIVE_LOCKED if conn.dialect.name == "postgresql" else _SEL_LIVE
        live = set(conn.execute(sel, {"b_ids": [cid for cid, _ in handoff]}).scalars())
        handoff = [(cid, want) for cid, want in handoff if cid in live]
    slots = [cid for cid, want in handoff for _ in range(want)]
    deadline = now_ms + int(timeout_s * 1000)
    for offset, item in enumerate(req.inputs):
        key = item.idempotency_key
        # A key seen in an earlier request is found by the insert's conflict below (one
        # statement instead of a read before every keyed insert); only a payload that no
        # longer decodes looks the key up first, so a retry still gets its earlier call.
        earlier = seen.get(key) if key is not None else None
        if earlier is not None:
            ids.append(earlier)
            continue
        try:
            data, ref, size = decode_payload(conn, principal.account_id, item.args, inline_max)
        except (InvalidRequestError, PayloadTooLargeError, NotFoundError):
            if key is None or (earlier := _known_key(conn, account, key)) is None:
                raise
            ids.append(earlier)
            continue
        call_id = new_id("ca")
        ids.append(call_id)
        container = slots.pop(0) if slots and handed is not None else None
        if container is not None:
            assert handed is not None
            handed.setdefault(container, []).append(
                InputAssignment(call_id=call_id, attempt=1, args=item.args, timeout_s=timeout_s)
            )
        rows.append(
            {
                "id": call_id,
                "account_id": principal.account_id,
                "app_id": fn.app_id,
                "function_id": fn.id,
                "group_id": req.group_id,
                "idx": req.start_index + offset,
                "state": "running" if container else "queued",
                "attempts": 1 if container else 0,
                "infra_requeues": 0,
                "preemptions": 0,
                "input": data,
                "input_ref": ref,
                "input_size": size,
                "output_size": 0,
                "idempotency_key": item.idempotency_key,
                "container_id": container,
                "caller_container_id": principal.container_id,
                "created_ms": now_ms,
                "started_ms": now_ms if container else None,
                "deadline_ms": deadline if container else None,
                "next_attempt_ms": 0,
                "delivered": False,
            }
        )
        if key is not None:
            seen[key] = call_id
            keyed.append(len(rows) - 1)
    # Keyed inputs first, one at a time and without failing on a duplicate: an earlier request
    # with the same key (a retry), or a concurrent one still running, may have won.
    for row in (rows[i] for i in keyed):
        if conn.execute(_INSERT_KEYED[conn.dialect.name], row).first() is not None:
            continue
        if row["idempotency_key"] == batch_key:
            if handed is not None:
                handed.clear()  # nothing of this request is inserted: hand nothing over
            return _batch_ids(conn, account, req)
        winner = _known_key(conn, account, row["idempotency_key"])
        if winner is None:  # the conflicting row vanished again: let the client retry
            raise ConflictError(
                f"idempotency key {row['idempotency_key']!r} is being used concurrently; retry"
            )
        ids = [winner if i == row["id"] else i for i in ids]  # repeats of the key too
        container = row["container_id"]
        if handed is not None and container:
            handed[container] = [a for a in handed[container] if a.call_id != row["id"]]
    keyed_set = set(keyed)
    execute_many(conn, _INSERT_CALLS, [r for i, r in enumerate(rows) if i not in keyed_set])
    return ids


def _known_key(conn: Connection, account_id: str, key: str) -> str | None:
    row = conn.execute(_SEL_IDEMPOTENT, {"b_account": account_id, "b_key": key}).first()
    return None if row is None else str(row.id)


def _batch_ids(conn: Connection, account_id: str, req: CallsCreate) -> list[str]:
    """The calls an earlier, identical request made for this batch of a map."""
    return [
        str(r.id)
        for r in conn.execute(
            select(calls.c.id)
            .where(
                calls.c.group_id == req.group_id,
                calls.c.account_id == account_id,
                calls.c.idx >= req.start_index,
                calls.c.idx < req.start_index + len(req.inputs),
            )
            .order_by(calls.c.idx)
        )
    ]


_INSERT_KEYED = {
    # RETURNING says whether the row went in (drivers disagree on rowcount here).
    "sqlite": sqlite_insert(calls)
    .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
    .returning(calls.c.id),
    "postgresql": pg_insert(calls)
    .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
    .returning(calls.c.id),
}


def made_by(principal: Principal) -> Any:
    """The calls ``principal`` may read and cancel: its account's, and for a container token
    only those its container made (true for every other token)."""
    if principal.container_id is None:
        return calls.c.account_id == principal.account_id
    return and_(
        calls.c.account_id == principal.account_id,
        calls.c.caller_container_id == principal.container_id,
    )


def get_call(conn: Connection, principal: Principal, call_id: str) -> CallInfo:
    """A call of ``principal`` (see :func:`made_by`); NotFound for any other."""
    stmt, params = _SEL_CALL, {"b_id": call_id, "b_account": principal.account_id}
    if principal.container_id is not None:
        stmt, params["b_caller"] = _SEL_CALL_MADE_BY, principal.container_id
    row = conn.execute(stmt, params).first()
    if row is None:
        raise NotFoundError(f"call {call_id} not found")
    return call_info(row)


def list_calls(
    conn: Connection,
    principal: Principal,
    *,
    app_id: str | None = None,
    function_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before: tuple[int, str] | None = None,
) -> list[CallInfo]:
    """The account's calls, newest first. ``before`` = (created_ms, id) of the last call of
    the previous page: the page after it (keyset pagination, one index range per page)."""
    q = select(*_CALL_COLUMNS).where(calls.c.account_id == principal.account_id)
    if before is not None:
        b_ms, b_id = before
        # The first term bounds the index range; the second breaks ties in one millisecond.
        q = q.where(
            calls.c.created_ms <= b_ms,
            or_(calls.c.created_ms < b_ms, calls.c.id < b_id),
        )
    if app_id:
        q = q.where(calls.c.app_id == app_id)
    if function_id:
        q = q.where(calls.c.function_id == function_id)
    if state:
        q = q.where(calls.c.state == state)
    rows = conn.execute(q.order_by(calls.c.created_ms.desc(), calls.c.id.desc()).limit(limit))
    infos = []
    for r in rows:
        info = call_info(r)
        info.result = None  # listings carry states and costs, not payloads
        infos.append(info)
    return infos


# Past this many functions in a filter, the merge of per-function ranges costs more than
# walking the account's calls by time (list_calls).
_MERGE_MAX_FUNCTIONS = 100


def list_calls_by_range(
    conn: Connection,
    principal: Principal,
    *,
    app_id: str | None = None,
    function_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before: tuple[int, str] | None = None,
) -> list[CallInfo]:
    """Like :func:`list_calls` (newest first, ``before`` a cursor), for filtered listings of
    a large account: a filter by app, function or state reads the (function, state, id)
    index, one range per function and state, each already in creation order (ids sort by
    creation time) and cut at ``limit``, merged by the store. A rare or absent state, or a
    small app among millions of calls, costs no scan of the account's other calls."""
    if not (app_id or function_id or state):
        return list_calls(conn, principal, limit=limit, before=before)
    fq = select(functions.c.id).where(functions.c.account_id == principal.account_id)
    if app_id:
        fq = fq.where(functions.c.app_id == app_id)
    if function_id:
        fq = fq.where(functions.c.id == function_id)
    fns = list(conn.execute(fq.limit(_MERGE_MAX_FUNCTIONS + 1)).scalars())
    if len(fns) > _MERGE_MAX_FUNCTIONS:
        return list_calls(
            conn,
            principal,
            app_id=app_id,
            function_id=function_id,
            state=state,
            limit=limit,
            before=before,
        )
    if not fns:
        return []
    ranges = []
    for fn_id in fns:
        for st in [state] if state else [s.value for s in CallState]:
            q = select(*_CALL_COLUMNS).where(
                calls.c.function_id == fn_id,
                calls.c.state == st,
                calls.c.account_id == principal.account_id,
            )
            if before is not None:
                q = q.where(calls.c.id < before[1])
            ranges.append(select(q.order_by(calls.c.id.desc()).limit(limit).subquery()))
    merged = union_all(*ranges).subquery()
    rows = conn.execute(select(merged).order_by(merged.c.id.desc()).limit(limit))
    infos = []
    for r in rows:
        info = call_info(r)
        info.result = None
        infos.append(info)
    return infos


def group_results(
    conn: Connection,
    principal: Principal,
    group_id: str,
    limit: int,
    indices: Sequence[int] | None,
) -> GroupResults:
    """Finished calls of a group not delivered before (each is delivered once), or the given
    positions again; and how many calls of the group are unfinished."""
    results, outstanding = group_results_data(conn, principal, group_id, limit, indices)
    return GroupResults.model_validate({"results": results, "outstanding": outstanding})


def group_results_data(
    conn: Connection,
    principal: Principal,
    group_id: str,
    limit: int,
    indices: Sequence[int] | None,
) -> tuple[list[dict[str, Any]], int]:
    """:func:`group_results` as plain data, for the route that sends thousands at a time."""
    base = and_(calls.c.group_id == group_id, made_by(principal))
    terminal = calls.c.state.in_(TERMINAL_STATES)
    if indices is not None:
        rows = conn.execute(
            select(*_CALL_COLUMNS).where(base, terminal, calls.c.idx.in_(list(indices)))
        ).all()
    else:
        rows = conn.execute(
            select(*_CALL_COLUMNS)
            .where(base, calls.c.delivered.is_(False), terminal)
            .order_by(calls.c.idx)
            .limit(limit)
        ).all()
        if rows:
            conn.execute(
                update(calls).where(calls.c.id.in_([r.id for r in rows])).values(delivered=True)
            )
    # Unfinished calls are never delivered: saying so lets the index on (group, delivered,
    # state) count only them instead of the whole group.
    outstanding = conn.execute(
        select(func.count())
        .select_from(calls)
        .where(base, calls.c.delivered.is_(False), calls.c.state.in_(("queued", "running")))
    ).scalar_one()
    return [call_info_dict(r) for r in rows], int(outstanding)


def cancel_call(
    conn: Connection, principal: Principal, call_id: str, now_ms: int
) -> tuple[CallInfo, list[str], str | None]:
    """Cancel a call. Returns its info, keys to notify, and the container to stop when the
    call was running (a running Python function cannot be interrupted from outside, so its
    container is stopped; the container's other calls are requeued). Cancelling a finished
    call changes nothing."""
    row = conn.execute(
        select(calls.c.state, calls.c.container_id, calls.c.group_id, calls.c.started_ms).where(
            calls.c.id == call_id, made_by(principal)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"call {call_id} not found")
    keys: list[str] = []
    stop: str | None = None
    if row.state in ("queued", "running"):
        err = ErrorInfo(code="call_cancelled", message="the call was cancelled")
        values: dict[str, Any] = {
            "state": "cancelled",
            "finished_ms": now_ms,
            "error": err.model_dump(mode="json"),
        }
        if row.state == "running" and row.container_id and row.started_ms is not None:
            # The attempt ran until now, and its container's time is billed: the call's
            # cost says so (it showed "-" beside a bill that charged it).
            spent = attempt_cost(
                container_rate(conn, row.container_id), row.started_ms, now_ms, None
            )
            values["cost_micros"] = func.coalesce(calls.c.cost_micros, 0) + spent
        conn.execute(update(calls).where(calls.c.id == call_id).values(**values))
        keys = _keys_for_finished(call_id, row.group_id)
        if row.state == "running":
            stop = row.container_id
    return get_call(conn, principal, call_id), keys, stop


def cancel_queued_calls_of_app(conn: Connection, app_id: str, now_ms: int) -> None:
    """The app stopped: its queued and running calls are cancelled. A running call's cost
    includes its attempt until now, at its container's rate (billed with the container), as
    :func:`cancel_call` counts it."""
    err = ErrorInfo(code="call_cancelled", message="the app was stopped").model_dump(mode="json")
    rates: dict[str, int] = {}
    for r in conn.execute(
        select(calls.c.id, calls.c.container_id, calls.c.started_ms).where(
            calls.c.app_id == app_id,
            calls.c.state == "running",
            calls.c.container_id.is_not(None),
            calls.c.started_ms.is_not(None),
        )
    ).all():
        if r.container_id not in rates:
            rates[r.container_id] = container_rate(conn, r.container_id)
        spent = attempt_cost(rates[r.container_id], r.started_ms, now_ms, None)
        conn.execute(
            update(calls)
            .where(calls.c.id == r.id, calls.c.state == "running")
            .values(
                state="cancelled",
                finished_ms=now_ms,
                error=err,
                cost_micros=func.coalesce(calls.c.cost_micros, 0) + spent,
            )
        )
    conn.execute(
        update(calls)
        .where(calls.c.app_id == app_id, calls.c.state.in_(("queued", "running")))
        .values(state="cancelled", finished_ms=now_ms, error=err)
    )


def fail_queued_calls(
    conn: Connection,
    function_id: str,
    code: str,
    message: str,
    now_ms: int,
    *,
    error: ErrorInfo | None = None,
) -> list[str]:
    """Fail every queued call of a function (e.g. resources no host can satisfy), with
    ``error`` when given (``code`` and ``message`` otherwise)."""
    rows = conn.execute(
        select(calls.c.id, calls.c.group_id).where(
            calls.c.function_id == function_id, calls.c.state == "queued"
        )
    ).all()
    if not rows:
        return []
    err = (error or ErrorInfo(code=code, message=message)).model_dump(mode="json")
    conn.execute(
        update(calls)
        .where(calls.c.id.in_([r.id for r in rows]), calls.c.state == "queued")
        .values(state="failed", finished_ms=now_ms, error=err)
    )
    keys: list[str] = []
    for r in rows:
        keys.extend(_keys_for_finished(r.id, r.group_id))
    return keys


def claim_inputs(
    conn: Connection,
    container_id: str,
    function_id: str,
    want: int,
    timeout_s: float,
    now_ms: int,
    *,
    skip_locked: bool,
    groups: dict[str, str | None] | None = None,
    sequential: bool = True,
) -> list[InputAssignment]:
    """Hand up to ``want`` queued inputs of the function to the container, oldest first.
    ``groups`` (optional) receives each claimed call's group id, so recording its output
    needs no extra read. The server-side deadline of each is its timeout from now, times
    the inputs claimed when the worker runs them one after another (``sequential``): a
    concurrent or batched worker runs them at once."""
    if want <= 0:
        return []
    if skip_locked:  # PostgreSQL: one statement; its rows carry the new attempt number
        claimed = conn.execute(
            _CLAIM_RETURNING,
            {
                "b_fn": function_id,
                "b_now": now_ms,
                "b_n": want,
                "b_container": container_id,
                "b_timeout_ms": int(timeout_s * 1000),
                "b_seq": int(sequential),
            },
        ).all()
        # RETURNING follows no order; ids sort by creation time, oldest first.
        rows = [(r, r.attempts) for r in sorted(claimed, key=lambda r: r.id)]
    else:
        selected = conn.execute(
            _SEL_CLAIMABLE, {"b_fn": function_id, "b_now": now_ms, "b_n": want}
        ).all()
        if not selected:
            return []
        conn.execute(
            _CLAIM,
            {
                "b_ids": [r.id for r in selected],
                "b_container": container_id,
                "b_now": now_ms,
                # A sequential worker runs the inputs one after another and times each out
                # itself; this server-side backstop must allow for all of them.
                "b_deadline": now_ms + int(timeout_s * 1000) * (len(selected) if sequential else 1),
            },
        )
        rows = [(r, r.attempts + 1) for r in selected]
    out = []
    for r, attempt in rows:
        if groups is not None:
            groups[r.id] = r.group_id
        if r.input_ref:
            args = {"ref": r.input_ref, "size": r.input_size}
        else:
            args = {"data": base64.b64encode(r.input or b"").decode(), "size": r.input_size}
        out.append(
            InputAssignment.model_validate(
                {"call_id": r.id, "attempt": attempt, "args": args, "timeout_s": timeout_s}
            )
        )
    return out


def _requeued(function_id: str, values: dict[str, Any], now_ms: int) -> list[str]:
    """The wake-ups of a call queued again: its function's now, and, for a retry after a
    delay, its function's again when the delay ends (``retry:FN:MS``, server/wakeups.py):
    idle containers would otherwise look only at their next recheck (a second)."""
    keys = [f"fn:{function_id}"]
    delay = int(values.get("next_attempt_ms", now_ms)) - now_ms
    if delay > 0:
        keys.append(f"retry:{function_id}:{delay}")
    return keys


def _failure(
    row: Any, retries: RetryPolicy, error: ErrorInfo, terminal_state: str, now_ms: int
) -> dict[str, Any]:
    """The update for a failed attempt: requeue with backoff while retries last."""
    # Requeues after host loss and preemptions are not the function's failures.
    failures = row.attempts - row.infra_requeues - row.preemptions
    if failures <= retries.max_retries:
        delay = retry_delay_ms(
            failures,
            retries.initial_delay_s,
            retries.backoff_coefficient,
            retries.max_delay_s,
        )
        return {
            "state": "queued",
            "container_id": None,
            "next_attempt_ms": now_ms + delay,
            "deadline_ms": None,
            "error": error.model_dump(mode="json"),
        }
    return {
        "state": terminal_state,
        "finished_ms": now_ms,
        "error": error.model_dump(mode="json"),
    }


def record_outputs(
    conn: Connection,
    container_id: str,
    outputs: Iterable[OutputItem],
    rate_micros_per_hour: int,
    retries: RetryPolicy,
    now_ms: int,
    inline_max: int,
    account_id: str,
    *,
    groups: dict[str, str | None] | None = None,
) -> list[str]:
    """Record a container's outputs. Outputs for calls no longer assigned to this attempt of
    this container (timed out and retried elsewhere, cancelled) are dropped.

    Successes take the fast path: one guarded UPDATE each (executemany), no read. ``groups``
    (call id → group id, from the claim) avoids reading the groups to notify; calls missing
    from it are looked up. Failures read their row to apply the retry policy."""
    outputs = list(outputs)
    if not outputs:
        return []
    keys: list[str] = []
    done = [o for o in outputs if o.status == "succeeded"]
    if done:
        params = []
        for out in done:
            if out.result is None:
                raise InvalidRequestError(f"output for {out.call_id} has no result")
            data, ref, size = decode_payload(conn, account_id, out.result, inline_max)
            params.append(
                {
                    "b_id": out.call_id,
                    "b_container": container_id,
                    "b_attempt": out.attempt,
                    "b_now": now_ms,
                    "b_output": data,
                    "b_output_ref": ref,
                    "b_output_size": size,
                    "b_exec_ms": out.exec_ms,
                    "b_cost": out.exec_us * rate_micros_per_hour // (MS_PER_HOUR * 1000),
                    "b_rate": rate_micros_per_hour,
                }
            )
        execute_many(conn, _SUCCEED, params)
        known = groups if groups is not None else {}
        unknown = [o.call_id for o in done if o.call_id not in known]
        if unknown:
            found = {r.id: r.group_id for r in conn.execute(_SEL_GROUPS, {"b_ids": unknown})}
            known = {**known, **found}
        for out in done:
            keys.extend(_keys_for_finished(out.call_id, known.get(out.call_id)))
    outputs = [o for o in outputs if o.status != "succeeded"]
    if not outputs:
        return keys
    rows = {
        r.id: r
        for r in conn.execute(
            select(
                calls.c.id,
                calls.c.state,
                calls.c.attempts,
                calls.c.infra_requeues,
                calls.c.preemptions,
                calls.c.container_id,
                calls.c.group_id,
                calls.c.function_id,
                calls.c.started_ms,
            ).where(calls.c.id.in_([o.call_id for o in outputs]))
        )
    }
    for out in outputs:
        row = rows.get(out.call_id)
        if (
            row is None
            or row.state != "running"
            or row.container_id != container_id
            or row.attempts != out.attempt
        ):
            continue
        error = out.error or ErrorInfo(code="remote_error", message="the function failed")
        if out.status == "timed_out":
            error.code = FunctionTimeoutError.code
        values = _failure(
            row, retries, error, "timed_out" if out.status == "timed_out" else "failed", now_ms
        )
        values["exec_ms"] = reported_run_ms(out.exec_ms, row.started_ms, now_ms)
        spent = attempt_cost(rate_micros_per_hour, row.started_ms, now_ms, out.exec_ms)
        values["cost_micros"] = func.coalesce(calls.c.cost_micros, 0) + spent
        # Guarded like the success path: a cancel that committed meanwhile stands.
        done_update = conn.execute(
            update(calls)
            .where(
                calls.c.id == out.call_id,
                calls.c.state == "running",
                calls.c.container_id == container_id,
                calls.c.attempts == out.attempt,
            )
            .values(**values)
        )
        if done_update.rowcount == 1 and values["state"] == "queued":
            record_ended_attempt(
                conn,
                row,
                "timed_out" if out.status == "timed_out" else "failed",
                now_ms,
                cost_micros=spent,
                error=values["error"],
                exec_ms=values["exec_ms"],
            )
        if values["state"] != "queued":
            keys.extend(_keys_for_finished(out.call_id, row.group_id))
        else:
            keys.extend(_requeued(row.function_id, values, now_ms))
    return keys


# The calls a container was running (built once: every container's end reads them).
_RUNNING_IN = (
    select(
        calls.c.id,
        calls.c.function_id,
        calls.c.group_id,
        calls.c.attempts,
        calls.c.infra_requeues,
        calls.c.preemptions,
        calls.c.container_id,
        calls.c.started_ms,
        functions.c.spec_rev,
    )
    .join(functions, functions.c.id == calls.c.function_id)
    .where(calls.c.container_id == bindparam("b_ct"), calls.c.state == "running")
)


def requeue_calls_of_container(
    conn: Connection,
    container_id: str,
    now_ms: int,
    *,
    crashed: bool,
    message: str,
    max_infra_requeues: int,
    reason: str = "",
    ended_ms: int | None = None,
) -> list[str]:
    """The container is gone: its running calls go back to the queue.

    ``crashed``: the container died on its own (non-zero exit, killed by a signal we did not
    send): the attempt counts as a failure against the function's retries. Otherwise (host
    lost, stopped by the exchange) the requeue is free, up to ``max_infra_requeues``.
    ``reason`` is why the container ended (``host_lost`` names the attempt's outcome).
    ``ended_ms``: when the container stopped, if before ``now_ms`` (a lost host's last sync,
    where its metering ends): the attempts end, and are costed, there too.
    """
    rows = conn.execute(_RUNNING_IN, {"b_ct": container_id}).all()
    ended = now_ms if ended_ms is None else min(now_ms, ended_ms)
    keys: list[str] = []
    error = ErrorInfo(code=ContainerExitedError.code, message=message)
    rate = container_rate(conn, container_id) if rows else 0
    if crashed:
        outcome = "container_exited"
    elif reason in ("host_lost", "lost"):
        outcome = "host_lost"
    else:
        outcome = "stopped"
    for r in rows:
        spent = attempt_cost(rate, r.started_ms, ended, None)
        if crashed:
            retries = SPECS.at(conn, r.function_id, r.spec_rev).spec.retries
            values = _failure(r, retries, error, "failed", now_ms)
        elif r.infra_requeues + 1 > max_infra_requeues:
            values = {"state": "failed", "finished_ms": now_ms, "error": error.model_dump()}
        else:
            values = {
                "state": "queued",
                "container_id": None,
                "deadline_ms": None,
                "next_attempt_ms": now_ms,
                "infra_requeues": r.infra_requeues + 1,
            }
        values["cost_micros"] = func.coalesce(calls.c.cost_micros, 0) + spent
        conn.execute(update(calls).where(calls.c.id == r.id).values(**values))
        if values["state"] == "queued":
            record_ended_attempt(
                conn,
                r,
                outcome,
                max(ended, r.started_ms or ended),
                cost_micros=spent,
                error=error.model_dump(mode="json"),
            )
            keys.extend(_requeued(r.function_id, values, now_ms))
        else:
            keys.extend(_keys_for_finished(r.id, r.group_id))
    return keys


def requeue_preempted_calls(
    conn: Connection, container_id: str, rate_micros_per_hour: int, now_ms: int
) -> list[str]:
    """The container's lease was preempted: its running calls go back to the queue at once,
    counted as preemptions (not failures, not against the infrastructure requeue limit), and
    carry what their attempt cost so far. Whatever the container still reports for them is
    dropped (the attempt is no longer its)."""
    rows = conn.execute(
        select(
            calls.c.id,
            calls.c.function_id,
            calls.c.preemptions,
            calls.c.started_ms,
            calls.c.cost_micros,
            calls.c.attempts,
            calls.c.container_id,
        ).where(calls.c.container_id == container_id, calls.c.state == "running")
    ).all()
    keys: list[str] = []
    for r in rows:
        spent = rate_micros_per_hour * max(0, now_ms - (r.started_ms or now_ms)) // MS_PER_HOUR
        conn.execute(
            update(calls)
            .where(calls.c.id == r.id, calls.c.state == "running")
            .values(
                state="queued",
                container_id=None,
                deadline_ms=None,
                next_attempt_ms=now_ms,
                preemptions=r.preemptions + 1,
                cost_micros=(r.cost_micros or 0) + spent,
            )
        )
        record_ended_attempt(conn, r, "preempted", now_ms, cost_micros=spent)
        keys.append(f"fn:{r.function_id}")
    return keys


def record_timeout(conn: Connection, call_id: str, error: ErrorInfo, now_ms: int) -> list[str]:
    """A running call passed its deadline (server backstop): a failed attempt, retried while
    the function's retries last, else ``timed_out``."""
    row = conn.execute(
        select(
            calls.c.id,
            calls.c.state,
            calls.c.attempts,
            calls.c.infra_requeues,
            calls.c.preemptions,
            calls.c.group_id,
            calls.c.function_id,
            calls.c.container_id,
            calls.c.started_ms,
            functions.c.spec_rev,
        )
        .join(functions, functions.c.id == calls.c.function_id)
        .where(calls.c.id == call_id)
    ).first()
    if row is None or row.state != "running":
        return []
    retries = SPECS.at(conn, row.function_id, row.spec_rev).spec.retries
    values = _failure(row, retries, error, "timed_out", now_ms)
    spent = attempt_cost(container_rate(conn, row.container_id), row.started_ms, now_ms, None)
    values["cost_micros"] = func.coalesce(calls.c.cost_micros, 0) + spent
    conn.execute(update(calls).where(calls.c.id == call_id).values(**values))
    if values["state"] == "queued":
        record_ended_attempt(
            conn, row, "timed_out", now_ms, cost_micros=spent, error=values["error"]
        )
    if values["state"] == "queued":
        return _requeued(row.function_id, values, now_ms)
    return _keys_for_finished(call_id, row.group_id)
