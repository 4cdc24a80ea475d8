"""Containers: creation from the scheduler's plan, the worker's exchange, stopping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from crucible.errors import NotFoundError
from crucible.protocol.containers import ExchangeReply, OutputItem
from crucible.protocol.ids import new_id
from crucible.server.billing.metering import PriceTable, container_rate_micros_per_hour
from crucible.server.scheduler.core import StartContainer
from crucible.server.services.calls import claim_inputs, record_outputs
from crucible.server.store.tables import containers, functions

__all__ = [
    "ContainerFacts",
    "create_containers",
    "exchange_step",
    "load_container_facts",
    "request_stop",
]

# Once a second is plenty for the scheduler's idle detection (scale-down windows are seconds).
_TOUCH_EVERY_MS = 1000


@dataclass(frozen=True)
class ContainerFacts:
    """What never changes during a container's life: read once, then kept in memory."""

    id: str
    account_id: str
    function_id: str
    rate_micros_per_hour: int
    timeout_s: float
    retries: dict[str, Any]


_SEL_FACTS = (
    select(
        containers.c.id,
        containers.c.account_id,
        containers.c.function_id,
        containers.c.rate_micros_per_hour,
        functions.c.spec,
    )
    .join(functions, functions.c.id == containers.c.function_id)
    .where(containers.c.id == bindparam("b_id"))
)
_SEL_STATE = select(containers.c.state).where(containers.c.id == bindparam("b_id"))
_MARK_READY = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"), containers.c.state.in_(("pending", "starting")))
    .values(
        state="running",
        ready_ms=bindparam("b_now"),
        last_active_ms=bindparam("b_now"),
        # The worker can reach us before its agent reported the start; metering starts here
        # then, never later than the container's first sign of life.
        started_ms=func.coalesce(containers.c.started_ms, bindparam("b_now")),
    )
)
_TOUCH = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"))
    .values(last_active_ms=bindparam("b_now"))
)


def create_containers(
    conn: Connection,
    starts: Sequence[StartContainer],
    accounts_by_function: dict[str, str],
    prices: PriceTable,
    now_ms: int,
) -> list[str]:
    """Insert pending containers for the scheduler's starts; returns wake-up keys (hosts)."""
    keys: list[str] = []
    rows = []
    for s in starts:
        rows.append(
            {
                "id": new_id("ct"),
                "account_id": accounts_by_function[s.function_id],
                "function_id": s.function_id,
                "host_id": s.host_id,
                "state": "pending",
                "cpu": s.cpu,
                "memory_mib": s.memory_mib,
                "gpu_model": s.gpu_model,
                "gpu_indices": list(s.gpu_indices),
                "rate_micros_per_hour": container_rate_micros_per_hour(
                    prices, s.cpu, s.memory_mib, s.gpu_model, len(s.gpu_indices)
                ),
                "created_ms": now_ms,
                "last_active_ms": now_ms,
            }
        )
        keys.append(f"host:{s.host_id}")
    if rows:
        conn.execute(insert(containers), rows)
    return keys


def request_stop(conn: Connection, container_id: str) -> list[str]:
    """Ask a container's agent to stop it (SIGTERM, grace, SIGKILL). Idempotent; returns
    wake-up keys."""
    row = conn.execute(
        select(containers.c.state, containers.c.host_id).where(containers.c.id == container_id)
    ).first()
    if row is None or row.state in ("stopping", "stopped"):
        return []
    conn.execute(update(containers).where(containers.c.id == container_id).values(state="stopping"))
    return [f"host:{row.host_id}", f"container:{container_id}"]


def load_container_facts(conn: Connection, container_id: str) -> ContainerFacts:
    row = conn.execute(_SEL_FACTS, {"b_id": container_id}).first()
    if row is None:
        raise NotFoundError(f"container {container_id} not found")
    return ContainerFacts(
        id=row.id,
        account_id=row.account_id,
        function_id=row.function_id,
        rate_micros_per_hour=row.rate_micros_per_hour,
        timeout_s=float(row.spec["timeout_s"]),
        retries=row.spec["retries"],
    )


def exchange_step(
    conn: Connection,
    facts: ContainerFacts,
    outputs: list[OutputItem],
    want: int,
    now_ms: int,
    *,
    inline_max: int,
    skip_locked: bool,
    groups: dict[str, str | None],
    touched_ms: dict[str, int],
) -> tuple[ExchangeReply, list[str]]:
    """One pass of a worker's exchange: record outputs, then claim inputs. Returns the reply
    and the wake-up keys to notify after commit.

    ``groups`` is the server's memory of claimed calls' groups (read and extended here);
    ``touched_ms`` rate-limits writes of the container's last activity."""
    cid = facts.id
    state = conn.execute(_SEL_STATE, {"b_id": cid}).scalar_one_or_none()
    if state is None:
        raise NotFoundError(f"container {cid} not found")
    if state in ("pending", "starting"):
        conn.execute(_MARK_READY, {"b_id": cid, "b_now": now_ms})
        touched_ms[cid] = now_ms
    keys: list[str] = []
    if outputs:
        keys += record_outputs(
            conn,
            cid,
            outputs,
            facts.rate_micros_per_hour,
            facts.retries,
            now_ms,
            inline_max,
            facts.account_id,
            groups=groups,
        )
        for out in outputs:
            groups.pop(out.call_id, None)
    if state in ("stopping", "stopped"):
        return ExchangeReply(stop=True), keys
    inputs = claim_inputs(
        conn,
        cid,
        facts.function_id,
        want,
        facts.timeout_s,
        now_ms,
        skip_locked=skip_locked,
        groups=groups,
    )
    if (outputs or inputs) and now_ms - touched_ms.get(cid, 0) >= _TOUCH_EVERY_MS:
        conn.execute(_TOUCH, {"b_id": cid, "b_now": now_ms})
        touched_ms[cid] = now_ms
    return ExchangeReply(inputs=inputs), keys
