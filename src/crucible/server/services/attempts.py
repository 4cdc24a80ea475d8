"""Attempts of a call that ended while the call went on (requeued after a preemption, a lost
host, a crash, a failure or a timeout with retries left). The call's row holds its latest
attempt; these rows keep the earlier ones for its timeline: where each ran, how it ended and
what it cost. Nothing is written on the success path."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from crucible.core.metering import MS_PER_HOUR
from crucible.server.store.tables import call_attempts, containers

__all__ = ["attempt_cost", "container_rate", "record_ended_attempt"]


def container_rate(conn: Connection, container_id: str | None) -> int:
    """The container's price in micro-dollars per hour (0 when unknown)."""
    if container_id is None:
        return 0
    rate = conn.execute(
        select(containers.c.rate_micros_per_hour).where(containers.c.id == container_id)
    ).scalar()
    return int(rate or 0)


def attempt_cost(
    rate_micros_per_hour: int, started_ms: int | None, ended_ms: int, exec_ms: int | None
) -> int:
    """What an attempt's container time cost: the run time the worker reported, else the
    time from the hand-over to the end (a host lost or a timeout reports none)."""
    ms = exec_ms if exec_ms is not None else max(0, ended_ms - (started_ms or ended_ms))
    return rate_micros_per_hour * ms // MS_PER_HOUR


def record_ended_attempt(
    conn: Connection,
    row: Any,
    outcome: str,
    ended_ms: int,
    *,
    cost_micros: int,
    error: dict[str, Any] | None = None,
    exec_ms: int | None = None,
) -> None:
    """Keep the attempt ``row`` (a calls row as it was before the requeue: id, attempts,
    container_id, started_ms) as ended with ``outcome`` (preempted, host_lost,
    container_exited, stopped, failed, timed_out)."""
    conn.execute(
        insert(call_attempts).values(
            call_id=row.id,
            attempt=row.attempts,
            container_id=row.container_id,
            started_ms=row.started_ms,
            ended_ms=ended_ms,
            outcome=outcome,
            error=error,
            exec_ms=exec_ms,
            cost_micros=cost_micros,
        )
    )
