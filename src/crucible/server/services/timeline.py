"""A call's timeline: queued, scheduled, starting, running, finished, with what each phase's
container time cost. Built from the times the store keeps for the call and for the
container of its last attempt."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from crucible.errors import NotFoundError
from crucible.protocol.calls import CallTimeline, TimelinePhase
from crucible.server.auth import Principal
from crucible.server.billing.metering import MS_PER_HOUR
from crucible.server.store.tables import calls, containers, meter_intervals

__all__ = ["call_timeline"]


def call_timeline(
    conn: Connection, principal: Principal, call_id: str, now_ms: int
) -> CallTimeline:
    """The call's phases so far (a phase still going ends at ``now_ms``)."""
    c = conn.execute(
        select(calls).where(calls.c.id == call_id, calls.c.account_id == principal.account_id)
    ).first()
    if c is None:
        raise NotFoundError(f"call {call_id} not found")
    ct = None
    if c.container_id:
        ct = conn.execute(select(containers).where(containers.c.id == c.container_id)).first()
    rate = ct.rate_micros_per_hour if ct is not None else 0

    def cost(ms: int) -> int:
        return rate * ms // MS_PER_HOUR

    phases: list[TimelinePhase] = []

    def phase(name: str, start: int | None, end: int | None, billed: bool, detail: str) -> None:
        if start is None or end is None or end < start:
            return
        ms = end - start
        phases.append(
            TimelinePhase(
                phase=name,
                start_ms=start,
                end_ms=end,
                ms=ms,
                cost_micros=cost(ms) if billed else None,
                detail=detail,
            )
        )

    # A container created after the call was queued was started for it (a cold start).
    cold = ct is not None and ct.created_ms >= c.created_ms
    end_of_queue = c.started_ms or c.finished_ms or (now_ms if c.state == "queued" else None)
    if cold and ct is not None:
        phase("queued", c.created_ms, ct.created_ms, False, "waiting for a container")
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
            ct.ready_ms,
            True,
            "the agent started the container; the worker loads the function",
        )
        phase("waiting", ct.ready_ms, end_of_queue, True, "ready, the call not yet handed over")
    else:
        warm = f"a warm container ({ct.id})" if ct is not None else "a container"
        phase("queued", c.created_ms, end_of_queue, False, f"waiting for {warm}")
    if c.started_ms is not None:
        end = c.finished_ms if c.finished_ms is not None else now_ms
        exec_detail = f"ran {c.exec_ms} ms" if c.exec_ms is not None else c.state
        phase("running", c.started_ms, end, True, exec_detail)
    energy_mwh, carbon = _energy_share(conn, c.container_id, c.exec_ms)
    return CallTimeline(
        energy_mwh=energy_mwh,
        carbon_mg=carbon,
        call_id=c.id,
        state=c.state,
        attempts=c.attempts,
        preemptions=c.preemptions,
        container_id=c.container_id,
        host_id=ct.host_id if ct is not None else None,
        cold_start=cold,
        phases=phases,
        cost_micros=c.cost_micros,
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
