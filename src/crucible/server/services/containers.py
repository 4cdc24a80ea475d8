"""Containers: creation from the scheduler's plan, the worker's exchange, stopping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from crucible.errors import NotFoundError
from crucible.protocol.containers import ExchangeReply, OutputItem
from crucible.protocol.ids import new_id
from crucible.server.billing.metering import PriceTable, container_rate_micros_per_hour
from crucible.server.scheduler.core import StartContainer
from crucible.server.services.calls import claim_inputs, record_outputs
from crucible.server.store.tables import apps, containers, functions

__all__ = ["create_containers", "exchange_step", "load_container", "request_stop"]


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
    """Ask a container's agent to stop it (SIGTERM, grace, SIGKILL). A container that was
    never started is simply ended. Idempotent; returns wake-up keys."""
    row = conn.execute(
        select(containers.c.state, containers.c.host_id).where(containers.c.id == container_id)
    ).first()
    if row is None or row.state in ("stopping", "stopped"):
        return []
    conn.execute(update(containers).where(containers.c.id == container_id).values(state="stopping"))
    return [f"host:{row.host_id}", f"container:{container_id}"]


def load_container(conn: Connection, container_id: str) -> Any:
    row = conn.execute(
        select(
            containers.c.id,
            containers.c.state,
            containers.c.account_id,
            containers.c.function_id,
            containers.c.rate_micros_per_hour,
            functions.c.spec,
            apps.c.state.label("app_state"),
        )
        .join(functions, functions.c.id == containers.c.function_id)
        .join(apps, apps.c.id == functions.c.app_id)
        .where(containers.c.id == container_id)
    ).first()
    if row is None:
        raise NotFoundError(f"container {container_id} not found")
    return row


def exchange_step(
    conn: Connection,
    container_id: str,
    outputs: list[OutputItem],
    want: int,
    now_ms: int,
    *,
    inline_max: int,
    skip_locked: bool,
) -> tuple[ExchangeReply, list[str], str]:
    """One pass of a worker's exchange: record outputs, then claim inputs.

    Returns the reply, wake-up keys, and the function id (to wait on when nothing is queued).
    """
    row = load_container(conn, container_id)
    keys: list[str] = []
    if row.state in ("pending", "starting"):
        conn.execute(
            update(containers)
            .where(containers.c.id == container_id)
            .values(state="running", ready_ms=now_ms, last_active_ms=now_ms)
        )
    if outputs:
        keys += record_outputs(
            conn,
            container_id,
            outputs,
            row.rate_micros_per_hour,
            row.spec["retries"],
            now_ms,
            inline_max,
            row.account_id,
        )
    if row.state in ("stopping", "stopped") or row.app_state != "running":
        return ExchangeReply(stop=True), keys, row.function_id
    inputs = claim_inputs(
        conn,
        container_id,
        row.function_id,
        want,
        float(row.spec["timeout_s"]),
        now_ms,
        skip_locked=skip_locked,
    )
    if outputs or inputs:
        conn.execute(
            update(containers).where(containers.c.id == container_id).values(last_active_ms=now_ms)
        )
    return ExchangeReply(inputs=inputs), keys, row.function_id
