"""Fine-tuning jobs (``crucible fine-tune``): the call that trains a LoRA adapter for one of
the account's models, its loss read from the call's log, and the adapter registered on the
model once the call succeeds.

The trainer (``python -m crucible.inference.finetune``) prints one JSON object per line; the
job's container prints them to its log, so ``steps`` and ``checkpoints`` here are read from the
call's log lines. The state is the call's: cancelling a fine-tune cancels its call.

Registration happens when the job is read (``get_fine_tune``, ``list_fine_tunes``) and, for a
request that names ``MODEL:ADAPTER`` before anyone has looked, through
:func:`succeeded_adapter` (the OpenAI route serves it at once).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select, update

from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.fine_tunes import FineTuneCreate, FineTuneInfo, FineTuneStep
from crucible.protocol.ids import new_id
from crucible.protocol.models import AdapterCreate, check_not_base
from crucible.server.auth import Principal
from crucible.server.store.tables import calls, fine_tunes, log_lines, models

__all__ = [
    "ADAPTERS_DIR",
    "adapter_path",
    "create_fine_tune",
    "get_fine_tune",
    "list_fine_tunes",
    "succeeded_adapter",
]

ADAPTERS_DIR = "/model/adapters"  # where a model's containers see its volume's adapters/
_LOG_LINES_READ = 20_000  # a job's log lines read for its loss curve (one per step)


def adapter_path(adapter: str) -> str:
    """Where the trainer writes the adapter, as the model's containers see it."""
    return f"{ADAPTERS_DIR}/{adapter}"


def _model(conn: Connection, principal: Principal, name: str) -> Any:
    row = conn.execute(
        select(models).where(models.c.account_id == principal.account_id, models.c.name == name)
    ).first()
    if row is None:
        raise NotFoundError(
            f"no model named {name!r}; deploy one with `crucible model deploy {name} --weights ...`"
        )
    return row


def create_fine_tune(
    conn: Connection, principal: Principal, req: FineTuneCreate, now_ms: int
) -> FineTuneInfo:
    """Record the job; its call must be one of the account's calls."""
    model = _model(conn, principal, req.model)
    check_not_base(model.name, req.adapter)
    call = conn.execute(
        select(calls.c.id, calls.c.app_id).where(
            calls.c.id == req.call_id, calls.c.account_id == principal.account_id
        )
    ).first()
    if call is None:
        raise NotFoundError(f"call {req.call_id} not found (the fine-tune's call is yours)")
    taken = conn.execute(select(fine_tunes.c.id).where(fine_tunes.c.call_id == req.call_id)).first()
    if taken is not None:
        raise InvalidRequestError(f"call {req.call_id} already runs fine-tune {taken.id}")
    params = req.model_dump(exclude={"model", "adapter", "call_id"})
    ft_id = new_id("ft")
    conn.execute(
        fine_tunes.insert().values(
            id=ft_id,
            account_id=principal.account_id,
            model_id=model.id,
            adapter=req.adapter,
            call_id=req.call_id,
            app_id=call.app_id,
            params=params,
            registered=False,
            created_ms=now_ms,
        )
    )
    return get_fine_tune(conn, principal, ft_id, now_ms)


def _row(conn: Connection, principal: Principal, ft_id: str) -> Any:
    row = conn.execute(
        select(fine_tunes, models.c.name.label("model_name"))
        .join(models, models.c.id == fine_tunes.c.model_id)
        .where(fine_tunes.c.id == ft_id, fine_tunes.c.account_id == principal.account_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no fine-tune {ft_id!r}; list yours with `crucible fine-tune list`")
    return row


def _events(conn: Connection, call_id: str) -> list[dict[str, Any]]:
    """The trainer's JSON events in the call's log, in order."""
    out: list[dict[str, Any]] = []
    q = (
        select(log_lines.c.line)
        .where(log_lines.c.call_id == call_id)
        .order_by(log_lines.c.id)
        .limit(_LOG_LINES_READ)
    )
    for (line,) in conn.execute(q):
        text = str(line).strip()
        if not text.startswith("{"):
            continue
        try:
            event = json.loads(text)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            out.append(event)
    return out


def _register(conn: Connection, row: Any, now_ms: int) -> None:
    from crucible.server.services.models import add_adapter  # models resolves through us

    owner = Principal(account_id=row.account_id, scope="user")
    # Not validated again: the name was checked when the job was recorded, and a job
    # recorded under an older, looser rule must still register (not break every read).
    adapter = AdapterCreate.model_construct(
        name=row.adapter, path=adapter_path(row.adapter), source=f"fine-tune {row.id}"
    )
    add_adapter(
        conn,
        owner,
        row.model_name,
        adapter,
        now_ms,
        capped=False,
    )
    conn.execute(update(fine_tunes).where(fine_tunes.c.id == row.id).values(registered=True))


def _info(conn: Connection, row: Any, now_ms: int) -> FineTuneInfo:
    call = conn.execute(
        select(calls.c.state, calls.c.finished_ms, calls.c.error).where(calls.c.id == row.call_id)
    ).first()
    state = str(call.state) if call is not None else "unknown"
    registered = bool(row.registered)
    if state == "succeeded" and not registered:
        _register(conn, row, now_ms)
        registered = True
    steps: list[FineTuneStep] = []
    checkpoints: list[str] = []
    error = None
    for event in _events(conn, row.call_id):
        kind = event["event"]
        if kind == "step":
            try:
                steps.append(
                    FineTuneStep(
                        step=int(event["step"]),
                        epoch=int(event.get("epoch", 0)),
                        loss=float(event["loss"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        elif kind == "checkpoint":
            checkpoints.append(str(event.get("path", "")))
        elif kind == "error":
            error = str(event.get("message", ""))
    if error is None and call is not None and call.error and state != "succeeded":
        error = str((call.error or {}).get("message", "")) or None
    p = row.params
    return FineTuneInfo(
        id=row.id,
        model=row.model_name,
        adapter=row.adapter,
        call_id=row.call_id,
        app_id=row.app_id,
        state=state,
        method=str(p.get("method", "lora")),
        rank=int(p.get("rank", 0)),
        epochs=int(p.get("epochs", 0)),
        lr=float(p.get("lr", 0.0)),
        examples=int(p.get("examples", 0)),
        data=str(p.get("data", "")),
        created_ms=row.created_ms,
        finished_ms=call.finished_ms if call is not None else None,
        registered=registered,
        checkpoints=checkpoints,
        steps=steps,
        error=error,
    )


def get_fine_tune(conn: Connection, principal: Principal, ft_id: str, now_ms: int) -> FineTuneInfo:
    """The job, its loss so far; registers its adapter if its call has succeeded (so run
    this in a transaction)."""
    return _info(conn, _row(conn, principal, ft_id), now_ms)


def list_fine_tunes(conn: Connection, principal: Principal, now_ms: int) -> list[FineTuneInfo]:
    rows = conn.execute(
        select(fine_tunes, models.c.name.label("model_name"))
        .join(models, models.c.id == fine_tunes.c.model_id)
        .where(fine_tunes.c.account_id == principal.account_id)
        .order_by(fine_tunes.c.created_ms.desc())
        .limit(200)
    ).all()
    return [_info(conn, r, now_ms) for r in rows]


def succeeded_adapter(conn: Connection, model_id: str, adapter: str) -> str | None:
    """The path of ``adapter`` when a fine-tune of the model trained it and its call has
    succeeded but nobody has registered it yet; else None. Read-only."""
    row = conn.execute(
        select(fine_tunes.c.adapter)
        .join(calls, calls.c.id == fine_tunes.c.call_id)
        .where(
            fine_tunes.c.model_id == model_id,
            fine_tunes.c.adapter == adapter,
            calls.c.state == "succeeded",
        )
        .limit(1)
    ).first()
    return adapter_path(adapter) if row is not None else None
