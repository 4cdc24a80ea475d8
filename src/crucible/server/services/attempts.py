"""Attempts of a call that ended while the call went on (requeued after a preemption, a lost
host, a crash, a failure or a timeout with retries left). The call's row holds its latest
attempt; these rows keep the earlier ones for its timeline: where each ran, how it ended and
what it cost. Nothing is written on the success path."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from crucible.core.metering import MS_PER_HOUR
from crucible.server.store.tables import call_attempts, containers

__all__ = [
    "RUN_SLACK_MS",
    "attempt_cost",
    "container_rate",
    "record_ended_attempt",
    "reported_run_ms",
]


# How much longer than the time since the hand-over a reported run time may be (the
# worker's clock and the server's, a millisecond's rounding) before it is not believed.
RUN_SLACK_MS = 1_000


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
    ms = reported_run_ms(exec_ms, started_ms, ended_ms)
    return rate_micros_per_hour * ms // MS_PER_HOUR


def reported_run_ms(exec_ms: int | None, started_ms: int | None, ended_ms: int) -> int:
    """The run time the worker reported, or the time from the hand-over to the end where the
    report is longer than that by more than :data:`RUN_SLACK_MS` (a host reported any run
    time it liked: a call handed over 96 ms before showed 1,000,000 s and $525); without a
    report, that time itself."""
    elapsed = max(0, ended_ms - (started_ms or ended_ms))
    if exec_ms is None:
        return elapsed
    if started_ms is not None and exec_ms > elapsed + RUN_SLACK_MS:
        return elapsed
    return max(0, exec_ms)


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
