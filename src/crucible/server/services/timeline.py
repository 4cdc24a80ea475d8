"""A call's timeline: every attempt with its phases (queued, scheduled, starting, waiting,
running), how it ended and what its container time cost. Built from the times the store
keeps for the call (its latest attempt), for its earlier attempts (call_attempts) and for
the container of each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from crucible.core.metering import MS_PER_HOUR
from crucible.errors import NotFoundError
from crucible.protocol.calls import CallAttempt, CallTimeline, TimelinePhase
from crucible.protocol.common import ErrorInfo
from crucible.server.auth import Principal
from crucible.server.store.tables import call_attempts, calls, containers, meter_intervals

__all__ = ["call_timeline"]

_WHY_REQUEUED = {
    "preempted": "requeued after a preemption",
    "host_lost": "requeued: the host was lost",
    "container_exited": "retried: the container exited",
    "stopped": "requeued: the container was stopped",
    "failed": "retried after a failure",
    "timed_out": "retried after a timeout",
}


@dataclass(frozen=True)
class _Attempt:
    """What the timeline needs of one attempt, ended or not."""

    number: int
    queued_from: int  # when the call started waiting for this attempt
    started_ms: int | None
    ended_ms: int | None  # None: still running
    outcome: str
    container: Any  # the containers row, or None
    error: ErrorInfo | None
    exec_ms: int | None
    cost_micros: int | None


def _phases(a: _Attempt, now_ms: int, why_queued: str) -> tuple[list[TimelinePhase], bool]:
    """The attempt's phases and whether its container was started for it (a cold start)."""
    ct = a.container
    rate = ct.rate_micros_per_hour if ct is not None else 0
    out: list[TimelinePhase] = []

    def phase(name: str, start: int | None, end: int | None, billed: bool, detail: str) -> None:
        if start is None or end is None or end < start:
            return
        ms = end - start
        cost = rate * ms // MS_PER_HOUR if billed else None
        out.append(
            TimelinePhase(
                phase=name,
                start_ms=start,
                end_ms=end,
                ms=ms,
                cost_micros=cost,
                detail=detail,
                attempt=a.number,
            )
        )

    # A container created after the call began waiting was started for it (a cold start).
    cold = ct is not None and ct.created_ms >= a.queued_from
    end_of_queue = a.started_ms if a.started_ms is not None else (a.ended_ms or now_ms)
    if cold:
        phase("queued", a.queued_from, ct.created_ms, False, f"{why_queued}waiting for a container")
        phase(
            "scheduled",
            ct.created_ms,
            ct.started_ms or end_of_queue,
            False,
            f"container {ct.id} assigned to host {ct.host_id}",
        )
        phase(
            "starting",
            ct.started_ms,
            ct.ready_ms if ct.ready_ms is None else min(ct.ready_ms, end_of_queue),
            True,
            "the agent started the container; the worker loads the function",
        )
        phase("waiting", ct.ready_ms, end_of_queue, True, "ready, the call not yet handed over")
    else:
        warm = f"a warm container ({ct.id})" if ct is not None else "a container"
        phase("queued", a.queued_from, end_of_queue, False, f"{why_queued}waiting for {warm}")
    if a.started_ms is not None:
        end = a.ended_ms if a.ended_ms is not None else now_ms
        if a.outcome == "running":
            detail = "running"
        elif a.outcome == "succeeded":
            detail = f"ran {a.exec_ms} ms" if a.exec_ms is not None else "succeeded"
        else:
            detail = a.outcome + (f" ({a.error.code}: {a.error.message})" if a.error else "")
        phase("running", a.started_ms, end, True, detail)
    return out, cold


def call_timeline(
    conn: Connection, principal: Principal, call_id: str, now_ms: int
) -> CallTimeline:
    """The call's attempts and phases so far (a phase still going ends at ``now_ms``)."""
    c = conn.execute(
        select(calls).where(calls.c.id == call_id, calls.c.account_id == principal.account_id)
    ).first()
    if c is None:
        raise NotFoundError(f"call {call_id} not found")
    earlier = conn.execute(
        select(call_attempts)
        .where(call_attempts.c.call_id == c.id)
        .order_by(call_attempts.c.attempt)
    ).all()
    wanted = {r.container_id for r in earlier if r.container_id} | (
        {c.container_id} if c.container_id else set()
    )
    rows = {}
    if wanted:
        rows = {
            r.id: r for r in conn.execute(select(containers).where(containers.c.id.in_(wanted)))
        }
    attempts: list[_Attempt] = []
    queued_from = c.created_ms
    for r in earlier:
        attempts.append(
            _Attempt(
                number=r.attempt,
                queued_from=queued_from,
                started_ms=r.started_ms,
                ended_ms=r.ended_ms,
                outcome=r.outcome,
                container=rows.get(r.container_id),
                error=ErrorInfo.model_validate(r.error) if r.error else None,
                exec_ms=r.exec_ms,
                cost_micros=r.cost_micros,
            )
        )
        queued_from = r.ended_ms
    spent_before = sum(a.cost_micros or 0 for a in attempts)
    latest_started = c.attempts > len(earlier) and c.started_ms is not None
    if latest_started:
        ct = rows.get(c.container_id) if c.container_id else None
        running = c.state == "running"
        cost = c.cost_micros
        if running and ct is not None:
            cost = ct.rate_micros_per_hour * max(0, now_ms - c.started_ms) // MS_PER_HOUR
        elif cost is not None:
            cost = max(0, cost - spent_before)
        attempts.append(
            _Attempt(
                number=c.attempts,
                queued_from=queued_from,
                started_ms=c.started_ms,
                ended_ms=None if running else c.finished_ms,
                outcome=c.state,
                container=ct,
                error=ErrorInfo.model_validate(c.error) if c.error and not running else None,
                exec_ms=c.exec_ms,
                cost_micros=cost,
            )
        )
    phases: list[TimelinePhase] = []
    history: list[CallAttempt] = []
    for i, a in enumerate(attempts):
        why = _WHY_REQUEUED.get(attempts[i - 1].outcome, "") + ", " if i else ""
        got, cold = _phases(a, now_ms, why)
        phases.extend(got)
        ct = a.container
        history.append(
            CallAttempt(
                attempt=a.number,
                outcome=a.outcome,
                container_id=ct.id if ct is not None else None,
                host_id=ct.host_id if ct is not None else None,
                cold_start=cold,
                started_ms=a.started_ms,
                ended_ms=a.ended_ms,
                error=a.error,
                exec_ms=a.exec_ms,
                cost_micros=a.cost_micros,
            )
        )
    if not latest_started:
        # Waiting for its next attempt (or ended before one began: cancelled, failed).
        end = c.finished_ms if c.finished_ms is not None else now_ms
        why = _WHY_REQUEUED.get(attempts[-1].outcome, "") + ", " if attempts else ""
        waiting = "waiting for a container" if c.state == "queued" else f"{c.state} before it ran"
        if end >= queued_from:
            phases.append(
                TimelinePhase(
                    phase="queued",
                    start_ms=queued_from,
                    end_ms=end,
                    ms=end - queued_from,
                    detail=f"{why}{waiting}",
                    attempt=len(attempts) + 1,
                )
            )
    last = history[-1] if history else None
    energy_mwh, carbon = _energy_share(conn, c.container_id, c.exec_ms)
    return CallTimeline(
        energy_mwh=energy_mwh,
        carbon_mg=carbon,
        call_id=c.id,
        state=c.state,
        attempts=c.attempts,
        preemptions=c.preemptions,
        container_id=last.container_id if last and latest_started else None,
        host_id=last.host_id if last and latest_started else None,
        cold_start=bool(last and latest_started and last.cold_start),
        phases=phases,
        cost_micros=c.cost_micros,
        history=history,
    )


def _energy_share(
    conn: Connection, container_id: str | None, exec_ms: int | None
) -> tuple[int | None, int | None]:
    """The call's run time at its container's average metered power and emissions rate
    (None: nothing metered yet, or the call has not run)."""
    if container_id is None or exec_ms is None:
        return None, None
    m = conn.execute(
        select(
            func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms).label("ms"),
            func.sum(meter_intervals.c.energy_mwh).label("energy"),
            func.sum(meter_intervals.c.carbon_mg).label("carbon"),
        ).where(meter_intervals.c.container_id == container_id)
    ).first()
    if m is None or not m.ms:
        return None, None
    ms = min(exec_ms, int(m.ms))
    return int(m.energy or 0) * ms // int(m.ms), int(m.carbon or 0) * ms // int(m.ms)
