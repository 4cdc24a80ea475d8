"""Metering persistence and bills: the shell around the pure metering core."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, or_, select, update

from crucible.core.ledger import MeteredInterval
from crucible.core.metering import (
    carbon_mg,
    energy_split,
    estimated_energy_mwh,
    estimated_watts,
    interval_cost,
    intervals_due,
)
from crucible.protocol.billing import BillLine, BillReport
from crucible.protocol.gpus import CPU_CORE_WATTS, GPU_CATALOG
from crucible.server.auth import Principal
from crucible.server.billing.entries import NewEntry, charge_entry, post_entries
from crucible.server.billing.grid_carbon import GridReading
from crucible.server.billing.period import Period
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.tables import (
    apps,
    calls,
    containers,
    functions,
    hosts,
    meter_intervals,
)

__all__ = ["bill", "meter_containers", "record_grid_readings"]


_INSERT_INTERVALS = InsertSkipping(meter_intervals)


def _insert_ignore(conn: Connection, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    conn.execute(_INSERT_INTERVALS.on(conn), rows)


_SET_METERED = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"))
    .values(
        metered_until_ms=bindparam("b_until"),
        metered_cost_micros=bindparam("b_cost"),
        metered_energy_mwh=bindparam("b_energy"),
    )
)


def _estimated_watts(gpu_model: str | None, gpus: int, cpu: float) -> float:
    tdp = GPU_CATALOG[gpu_model].tdp_watts if gpu_model in GPU_CATALOG else 0
    return estimated_watts(tdp, gpus if gpu_model else 0, cpu, CPU_CORE_WATTS)


# A container without a CPU quota may use more cores than it reserved: the plausibility cap
# counts at least this many, and twice the devices' maximum power (TDP; unknown models 1 kW).
_CAP_MIN_CORES = 8.0
_CAP_FACTOR = 2.0
# A host cannot deflate them either: a GPU held by a container draws at least its idle power
# (half of the catalog's figure is counted, for the spread between boards).
_FLOOR_FACTOR = 0.5


def _plausible_watts(r: Any) -> float:
    gpus = len(r.gpu_indices or []) if r.gpu_model else 0
    tdp = GPU_CATALOG[r.gpu_model].tdp_watts if r.gpu_model in GPU_CATALOG else 1000
    cores = max(float(r.cpu), _CAP_MIN_CORES)
    return _CAP_FACTOR * estimated_watts(tdp, gpus, cores, CPU_CORE_WATTS)


def _floor_watts(r: Any) -> float:
    """The least a container's GPUs draw while they are its own: half their catalog idle
    power (unknown models: none). Reported energy below it is raised to it."""
    if r.gpu_model not in GPU_CATALOG:
        return 0.0
    return _FLOOR_FACTOR * GPU_CATALOG[r.gpu_model].idle_watts * len(r.gpu_indices or [])


def record_grid_readings(conn: Connection, readings: dict[str, GridReading]) -> None:
    """Put each region's grid figure (or, when its source failed, the reason the declared
    figure applies) on the region's hosts; metering and the market read it from there."""
    for region, r in readings.items():
        conn.execute(
            update(hosts)
            .where(hosts.c.region == region)
            .values(carbon_now_g_per_kwh=r.g_per_kwh, carbon_note=r.note)
        )


# What metering reads: every container with a closed interval due (built once; building
# it costs more than running it on a quiet store).
_begun = func.coalesce(containers.c.metered_until_ms, containers.c.started_ms)
_DUE_ROWS = (
    select(
        containers.c.id,
        containers.c.account_id,
        containers.c.function_id,
        containers.c.host_id,
        containers.c.started_ms,
        containers.c.stopped_ms,
        containers.c.lease_end_ms,
        containers.c.stop_by_ms,
        containers.c.metered_until_ms,
        containers.c.metered_cost_micros,
        containers.c.rate_micros_per_hour,
        containers.c.fee_ppm,
        containers.c.gpu_model,
        containers.c.gpu_indices,
        containers.c.cpu,
        containers.c.energy_mwh,
        containers.c.energy_estimated,
        containers.c.metered_energy_mwh,
        func.coalesce(hosts.c.carbon_now_g_per_kwh, hosts.c.carbon_g_per_kwh).label(
            "carbon_g_per_kwh"
        ),
        functions.c.app_id,
        hosts.c.last_seen_ms.label("host_seen_ms"),
    )
    .join(functions, functions.c.id == containers.c.function_id)
    .join(hosts, hosts.c.id == containers.c.host_id, isouter=True)
    .where(
        containers.c.started_ms.is_not(None),
        or_(
            # stopped, not yet accounted to its stop
            and_(
                containers.c.stopped_ms.is_not(None),
                or_(
                    containers.c.metered_until_ms.is_(None),
                    containers.c.metered_until_ms < containers.c.stopped_ms,
                ),
            ),
            # running past the end of its lease (preempted, in its grace period)
            and_(
                containers.c.stopped_ms.is_(None),
                containers.c.lease_end_ms.is_not(None),
                _begun < containers.c.lease_end_ms,
            ),
            # running, a whole interval due (not past the end of a stop its agent ignores)
            and_(
                containers.c.stopped_ms.is_(None),
                _begun <= bindparam("b_due_before"),
                or_(containers.c.stop_by_ms.is_(None), _begun < containers.c.stop_by_ms),
            ),
        ),
    )
)
# Metering reads a container's progress (metered_until_ms, metered_cost_micros) and writes it
# back: two passes over one container at once (the loop's tick and a stop, which meters its
# container in its own transaction) would each cut intervals from the same start and the last
# writer's total would not match the intervals kept. So the rows are locked; the loop skips a
# container another transaction holds (that one meters it), which also keeps the loop from
# ever waiting on, or deadlocking with, a request. SQLite has one writer.
_DUE = _DUE_ROWS.with_for_update(of=containers, skip_locked=True)
_DUE_OF_ONE = _DUE_ROWS.where(containers.c.id == bindparam("b_id")).with_for_update(of=containers)


def meter_containers(
    conn: Connection, now_ms: int, max_interval_ms: int, *, container_id: str | None = None
) -> int:
    """Record every closed metering interval that is due, and charge each in the ledger
    (renter debited; host and platform fee credited). Idempotent: an interval already recorded
    (same container and start) is neither recorded nor charged again.

    Metering covers ``[started, end)`` where ``end`` is when the container stopped or, if
    earlier, when its lease ended (preempted, out of credit): a preempted container's grace
    period is not charged. A running container is metered only up to its host's last sync
    (the last moment it was known alive): a host that goes silent and is then declared lost
    bills nothing for the silence. Only containers with something due are read, and everything is
    written in batches, so a tick costs what is due, not the fleet. Returns the intervals
    written."""
    due_before = now_ms - max_interval_ms
    if container_id is None:
        rows = conn.execute(_DUE, {"b_due_before": due_before}).all()
    else:
        rows = conn.execute(_DUE_OF_ONE, {"b_due_before": due_before, "b_id": container_id}).all()
    intervals: list[dict[str, object]] = []
    entries: list[NewEntry] = []
    marks: list[dict[str, object]] = []
    for r in rows:
        stop = r.stopped_ms
        if r.lease_end_ms is not None and (stop is None or r.lease_end_ms < stop):
            stop = max(r.lease_end_ms, r.started_ms)
        alive_ms = now_ms if r.host_seen_ms is None else min(now_ms, r.host_seen_ms)
        # Asked to stop and still reported running past the stop's deadline: billed to it.
        if (
            r.stop_by_ms is not None
            and r.stop_by_ms <= alive_ms
            and (stop is None or r.stop_by_ms < stop)
        ):
            stop = max(r.stop_by_ms, r.started_ms)
        due = intervals_due(r.started_ms, r.metered_until_ms, alive_ms, stop, max_interval_ms)
        charged = int(r.metered_cost_micros)
        energy_done = int(r.metered_energy_mwh)
        # Measured: what the agent reported since the last tick, shared by length; not
        # reported (an agent that does not meter): the catalog estimate.
        measured = r.energy_mwh is not None
        if measured and due:
            reported = int(r.energy_mwh) - energy_done
            # A host cannot bill a renter's emissions beyond what its devices can draw: energy
            # above twice their maximum power over the time it covers is dropped.
            span = (stop if stop is not None else now_ms) - due[0][0]
            cap = estimated_energy_mwh(_plausible_watts(r), 0, 0, max(0, span))
            floor = estimated_energy_mwh(_floor_watts(r), 0, 0, max(0, span))
            energies = energy_split(max(min(reported, cap), floor), due)
            energy_done = max(energy_done, int(r.energy_mwh)) - sum(energies)
        elif measured:
            energies = []
        else:
            watts = _estimated_watts(r.gpu_model, len(r.gpu_indices or []), float(r.cpu))
            energies = [estimated_energy_mwh(watts, r.started_ms, s, e) for s, e in due]
        for (start, end), energy in zip(due, energies, strict=True):
            cost = interval_cost(r.rate_micros_per_hour, r.started_ms, start, end)
            energy_done += energy
            intervals.append(
                {
                    "container_id": r.id,
                    "start_ms": start,
                    "end_ms": end,
                    "account_id": r.account_id,
                    "app_id": r.app_id,
                    "function_id": r.function_id,
                    "cost_micros": cost,
                    "energy_mwh": energy,
                    "carbon_mg": carbon_mg(energy, r.carbon_g_per_kwh),
                    "carbon_g_per_kwh": r.carbon_g_per_kwh,
                    "energy_estimated": bool(r.energy_estimated) or not measured,
                }
            )
            if cost:
                interval = MeteredInterval(
                    key=f"ct:{r.id}:{start}",
                    renter=r.account_id,
                    host=r.host_id,
                    meter=r.id,
                    start_ms=start,
                    end_ms=end,
                    cost_micros=cost,
                )
                entries.append(
                    charge_entry(
                        interval,
                        charged,
                        int(r.fee_ppm),
                        now_ms,
                        app_id=r.app_id,
                        function_id=r.function_id,
                    )
                )
                charged += cost
        # A stopped container is accounted up to its stop (past a lease end it was not
        # charged for), so it is not read again.
        until = due[-1][1] if due else r.metered_until_ms
        if r.stopped_ms is not None:
            until = max(until or 0, r.stopped_ms)
        if until != r.metered_until_ms or energy_done != r.metered_energy_mwh:
            marks.append(
                {"b_id": r.id, "b_until": until, "b_cost": charged, "b_energy": energy_done}
            )
    _insert_ignore(conn, intervals)
    post_entries(conn, entries)
    if marks:
        conn.execute(_SET_METERED, marks)
    return len(intervals)


def bill(
    conn: Connection, principal: Principal, app_id: str | None = None, period: Period = Period()
) -> BillReport:
    """Cost per app and function: metered container time, and calls with their run time
    (within ``period``: intervals by their start, calls by their submission)."""
    q = (
        select(
            meter_intervals.c.app_id,
            meter_intervals.c.function_id,
            func.count(func.distinct(meter_intervals.c.container_id)).label("containers"),
            func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms).label("ms"),
            func.sum(meter_intervals.c.cost_micros).label("cost"),
            func.sum(meter_intervals.c.energy_mwh).label("energy"),
            func.sum(meter_intervals.c.carbon_mg).label("carbon"),
            func.max(case((meter_intervals.c.energy_estimated, 1), else_=0)).label("estimated"),
        )
        .where(
            meter_intervals.c.account_id == principal.account_id,
            *period.where(meter_intervals.c.start_ms),
        )
        .group_by(meter_intervals.c.app_id, meter_intervals.c.function_id)
    )
    cq = (
        select(
            calls.c.function_id,
            func.count().label("n"),
            func.coalesce(func.sum(calls.c.exec_ms), 0).label("exec_ms"),
        )
        .where(calls.c.account_id == principal.account_id, *period.where(calls.c.created_ms))
        .group_by(calls.c.function_id)
    )
    if app_id:
        q = q.where(meter_intervals.c.app_id == app_id)
        # By function rather than app: (account, function, exec_ms) is a covering index.
        cq = cq.where(
            calls.c.function_id.in_(select(functions.c.id).where(functions.c.app_id == app_id))
        )
    metered = {(r.app_id, r.function_id): r for r in conn.execute(q)}
    call_stats = {r.function_id: r for r in conn.execute(cq)}
    fn_ids = {f for _, f in metered} | set(call_stats)
    names: dict[str, tuple[str, str, str]] = {}
    if fn_ids:
        for r in conn.execute(
            select(
                functions.c.id,
                functions.c.name,
                apps.c.id.label("app_id"),
                apps.c.name.label("app"),
            )
            .join(apps, apps.c.id == functions.c.app_id)
            .where(functions.c.id.in_(fn_ids))
        ):
            names[r.id] = (r.app_id, r.app, r.name)
    lines: list[BillLine] = []
    for fid in sorted(fn_ids, key=lambda f: names.get(f, ("", "", f))):
        app, app_name, fn_name = names.get(fid, ("?", "?", fid))
        m = metered.get((app, fid))
        c = call_stats.get(fid)
        lines.append(
            BillLine(
                app_id=app,
                app_name=app_name,
                function_id=fid,
                function_name=fn_name,
                containers=int(m.containers) if m else 0,
                container_ms=int(m.ms or 0) if m else 0,
                cost_micros=int(m.cost or 0) if m else 0,
                calls=int(c.n) if c else 0,
                exec_ms=int(c.exec_ms) if c else 0,
                energy_mwh=int(m.energy or 0) if m else 0,
                carbon_mg=int(m.carbon or 0) if m else 0,
                energy_estimated=bool(m.estimated) if m else False,
            )
        )
    return BillReport(
        account_id=principal.account_id,
        since_ms=period.since_ms,
        until_ms=period.until_ms,
        lines=lines,
        total_micros=sum(line.cost_micros for line in lines),
        total_energy_mwh=sum(line.energy_mwh for line in lines),
        total_carbon_mg=sum(line.carbon_mg for line in lines),
    )
