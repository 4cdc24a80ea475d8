"""Schedules of deployed functions: kept in step with the current version, and fired by the
scheduler loop.

A tick is claimed by moving the row's ``next_run_ms`` forward with a compare-and-set in the
transaction that creates its call, and the call carries an idempotency key made of the
deployment, the function and the tick: exactly one call per tick, however many schedulers run
and however often they restart. Ticks missed while the exchange was down run once: the next
tick is computed from now, not from the missed one.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import Connection, and_, delete, insert, select, update

from crucible.protocol import json_payload
from crucible.protocol.calls import CallsCreate, InputItem
from crucible.protocol.common import Payload
from crucible.protocol.deployments import ScheduleInfo
from crucible.protocol.schedules import ScheduleSpec, next_tick_ms
from crucible.server.auth import Principal
from crucible.server.services.apps import get_function_row
from crucible.server.services.calls import create_calls
from crucible.server.services.function_specs import SPECS
from crucible.server.store.tables import apps, calls, deployments, functions, schedules

__all__ = ["drop_schedules", "fire_due_schedules", "schedule_infos", "sync_schedules"]

log = logging.getLogger(__name__)

# A scheduled call gets no arguments; its result is pickled like any SDK call's.
_INPUT = json_payload.encode({"args": [], "kwargs": {}, "reply": "pickle"})
_BATCH = 100  # due schedules fired per tick at most; the rest go next tick


def _tick_key(deployment_id: str, function_name: str, tick_ms: int) -> str:
    which = hashlib.sha256(f"{deployment_id}/{function_name}".encode()).hexdigest()[:32]
    return f"schedule:{which}:{tick_ms}"


def sync_schedules(conn: Connection, deployment_id: str, app_id: str, now_ms: int) -> None:
    """After ``app_id`` became the current version: one row per scheduled function of it.
    An unchanged schedule keeps its next run (a redeploy neither skips nor repeats a tick);
    a new or changed one starts from now; functions no longer scheduled lose theirs."""
    wanted: dict[str, ScheduleSpec] = {}
    account = ""
    rows = conn.execute(
        select(
            functions.c.id, functions.c.name, functions.c.spec_rev, functions.c.account_id
        ).where(functions.c.app_id == app_id)
    ).all()
    specs = SPECS.get_many(conn, {r.id: r.spec_rev for r in rows})
    for r in rows:
        account = r.account_id
        scheduled = specs[r.id].spec.schedule if r.id in specs else None
        if scheduled is not None:
            wanted[r.name] = scheduled
    have = {
        r.function_name: r
        for r in conn.execute(select(schedules).where(schedules.c.deployment_id == deployment_id))
    }
    for name in have:
        if name not in wanted:
            conn.execute(
                delete(schedules).where(
                    schedules.c.deployment_id == deployment_id, schedules.c.function_name == name
                )
            )
    for name, spec in wanted.items():
        row = have.get(name)
        if row is not None and ScheduleSpec.model_validate(row.spec) == spec:
            continue
        values = {
            "account_id": account,
            "spec": spec.model_dump(mode="json"),
            "anchor_ms": now_ms,
            "next_run_ms": next_tick_ms(spec, now_ms, now_ms),
        }
        if row is None:
            conn.execute(
                insert(schedules).values(deployment_id=deployment_id, function_name=name, **values)
            )
        else:
            conn.execute(
                update(schedules)
                .where(
                    schedules.c.deployment_id == deployment_id, schedules.c.function_name == name
                )
                .values(**values)
            )


def drop_schedules(conn: Connection, deployment_id: str) -> None:
    conn.execute(delete(schedules).where(schedules.c.deployment_id == deployment_id))


def schedule_infos(conn: Connection, deployment_id: str) -> list[ScheduleInfo]:
    return [
        ScheduleInfo(
            function=r.function_name,
            schedule=ScheduleSpec.model_validate(r.spec).describe(),
            next_run_ms=r.next_run_ms,
            last_tick_ms=r.last_tick_ms,
            last_call_id=r.last_call_id,
        )
        for r in conn.execute(
            select(schedules)
            .where(schedules.c.deployment_id == deployment_id)
            .order_by(schedules.c.function_name)
        )
    ]


def fire_due_schedules(conn: Connection, now_ms: int, inline_max: int) -> list[str]:
    """Create the call of every schedule due at ``now_ms``; returns wake-up keys."""
    keys: list[str] = []
    due = conn.execute(
        select(schedules, deployments.c.current_app_id, deployments.c.state.label("dep_state"))
        .join(deployments, deployments.c.id == schedules.c.deployment_id)
        .where(schedules.c.next_run_ms <= now_ms)
        .order_by(schedules.c.next_run_ms)
        .limit(_BATCH)
    ).all()
    for row in due:
        fid = None
        if row.dep_state == "running" and row.current_app_id:
            fid = conn.execute(
                select(functions.c.id)
                .join(apps, apps.c.id == functions.c.app_id)
                .where(
                    functions.c.app_id == row.current_app_id,
                    functions.c.name == row.function_name,
                    apps.c.state == "running",
                )
            ).scalar_one_or_none()
        key_where = and_(
            schedules.c.deployment_id == row.deployment_id,
            schedules.c.function_name == row.function_name,
        )
        if fid is None:  # the deployment stopped or no longer has it: nothing to run
            conn.execute(delete(schedules).where(key_where))
            continue
        spec = ScheduleSpec.model_validate(row.spec)
        tick = row.next_run_ms
        claimed = conn.execute(
            update(schedules)
            .where(key_where, schedules.c.next_run_ms == tick)
            .values(next_run_ms=next_tick_ms(spec, now_ms, row.anchor_ms), last_tick_ms=tick)
        )
        if claimed.rowcount != 1:  # another scheduler took this tick
            continue
        owner = Principal(account_id=row.account_id, scope="user")
        fn = get_function_row(conn, owner, fid)
        req = CallsCreate(
            inputs=[
                InputItem(
                    args=Payload.inline(_INPUT),
                    idempotency_key=_tick_key(row.deployment_id, row.function_name, tick),
                )
            ]
        )
        (call_id,) = create_calls(conn, owner, fn, req, now_ms, inline_max)
        conn.execute(update(calls).where(calls.c.id == call_id).values(tick_ms=tick))
        conn.execute(update(schedules).where(key_where).values(last_call_id=call_id))
        if tick < now_ms - 60_000:
            log.info(
                "schedule of %s/%s: tick %d ran late (missed ticks run once)",
                row.deployment_id,
                row.function_name,
                tick,
            )
        keys.append(f"fn:{fid}")
    return keys
