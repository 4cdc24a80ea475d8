"""Metering: the pure core (exact, gap-free) and its persistence (idempotent)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from crucible.core.market import CPU
from crucible.core.metering import (
    MS_PER_HOUR,
    interval_cost,
    intervals_due,
)
from crucible.server.auth import Principal
from crucible.server.billing.service import bill, meter_containers
from crucible.server.services.market import default_offer
from crucible.server.store.tables import containers, meter_intervals
from crucible.settings import load_settings

from server_testlib import World

RATES = st.integers(0, 10**10)  # micro-dollars per hour: up to $10,000/h
TIMES = st.integers(0, 10**13)  # ms since the epoch, to the year 2286


@settings(max_examples=300, deadline=None, database=None)
@given(
    rate=RATES,
    origin=TIMES,
    length=st.integers(0, 10**10),
    cuts=st.lists(st.integers(0, 10**10), max_size=30),
)
def test_any_split_of_a_lifetime_costs_exactly_the_whole(
    rate: int, origin: int, length: int, cuts: list[int]
) -> None:
    end = origin + length
    points = sorted({origin, end, *(origin + c % (length + 1) for c in cuts)})
    pieces = [interval_cost(rate, origin, a, b) for a, b in pairwise(points)]
    assert all(p >= 0 for p in pieces)
    assert sum(pieces) == interval_cost(rate, origin, origin, end) == rate * length // MS_PER_HOUR


def test_interval_cost_examples_and_misuse() -> None:
    assert interval_cost(3_600_000, 0, 0, 1) == 1  # 1 µ$/ms
    assert interval_cost(1_000_000, 0, 0, MS_PER_HOUR) == 1_000_000
    # Sub-micro-dollar pieces are not lost: they land in a later piece.
    assert [interval_cost(1000, 0, t, t + 1800) for t in range(0, 7200, 1800)] == [0, 1, 0, 1]
    for origin, start, end in [(10, 5, 20), (0, 20, 10)]:
        with pytest.raises(ValueError):
            interval_cost(1000, origin, start, end)


@settings(max_examples=300, deadline=None, database=None)
@given(
    started=TIMES,
    step=st.integers(1, 100_000),
    ticks=st.lists(st.integers(0, 4000), max_size=12),  # thousandths of a step
    whole=st.integers(0, 40),
    part=st.integers(0, 10**6),
)
def test_intervals_cover_the_lifetime_without_gaps_or_overlap(
    started: int, step: int, ticks: list[int], whole: int, part: int
) -> None:
    """Metering ticks at arbitrary times while the container runs, then once after it stops:
    the intervals tile [started, stopped) exactly, and running containers only ever get whole
    intervals that have already ended."""
    lifetime = whole * step + part % step
    stopped = started + lifetime
    metered_until: int | None = None
    got: list[tuple[int, int]] = []
    now = started
    for gap in ticks:
        now += gap * step // 1000
        if now >= stopped:
            break
        due = intervals_due(started, metered_until, now, None, step)
        for a, b in due:
            assert b - a == step and b <= now
        got += due
        if due:
            metered_until = due[-1][1]
        assert now - (metered_until or started) < step  # only the open remainder waits
    final = intervals_due(started, metered_until, max(now, stopped), stopped, step)
    assert all(0 < b - a <= step for a, b in final)
    got += final
    assert intervals_due(started, got[-1][1] if got else None, stopped + 10**6, stopped, step) == []
    if lifetime == 0:
        assert got == []
        return
    assert got[0][0] == started and got[-1][1] == stopped
    assert all(a < b for a, b in got)
    assert all(b == a2 for (_, b), (a2, _) in pairwise(got))


def test_intervals_due_examples() -> None:
    assert intervals_due(0, None, 25, None, 10) == [(0, 10), (10, 20)]
    assert intervals_due(0, 20, 29, None, 10) == []
    assert intervals_due(0, 20, 30, None, 10) == [(20, 30)]
    assert intervals_due(0, 20, 999, 25, 10) == [(20, 25)]
    assert intervals_due(0, None, 999, 0, 10) == []
    assert intervals_due(0, 30, 999, 25, 10) == []  # never before where metering stopped


def test_default_offers_follow_the_settings_and_the_catalog() -> None:
    settings = load_settings({})
    cpu = default_offer(CPU, settings)
    assert (cpu.on_demand, cpu.memory_on_demand) == (40_000, 5_000)
    assert cpu.interruptible_min == 20_000 and cpu.reserved == 32_000
    h100 = default_offer("H100", settings)
    assert (h100.on_demand, h100.interruptible_min, h100.reserved) == (
        1_890_000,
        945_000,
        1_512_000,
    )
    cheap = default_offer(
        "H100", load_settings({"CRUCIBLE_DEFAULT_INTERRUPTIBLE_FRACTION": "0.25"})
    )
    assert cheap.interruptible_min == 472_500


# -- persistence -------------------------------------------------------------------------------


def test_meter_containers_is_idempotent_and_exact(world: World) -> None:
    fid = world.function()
    cid = world.container(fid, cpu=2.0, memory_mib=2048)
    start = world.now_ms + 500
    with world.engine.begin() as conn:
        conn.execute(
            update(containers)
            .where(containers.c.id == cid)
            .values(state="running", started_ms=start)
        )
        rate = conn.execute(
            select(containers.c.rate_micros_per_hour).where(containers.c.id == cid)
        ).scalar_one()
    assert rate == 2 * 40_000 + 2 * 5_000
    world.host_synced(start + 10**9)  # its host stays alive throughout

    def intervals() -> list[tuple[int, int, int]]:
        with world.engine.connect() as conn:
            return [
                (r.start_ms, r.end_ms, r.cost_micros)
                for r in conn.execute(
                    select(
                        meter_intervals.c.start_ms,
                        meter_intervals.c.end_ms,
                        meter_intervals.c.cost_micros,
                    ).order_by(meter_intervals.c.start_ms)
                )
            ]

    def meter(now: int) -> int:
        with world.engine.begin() as conn:
            return meter_containers(conn, now, 10_000)

    assert meter(start + 9_999) == 0 and intervals() == []
    assert meter(start + 25_000) == 2
    first = intervals()
    assert [(a, b) for a, b, _ in first] == [
        (start, start + 10_000),
        (start + 10_000, start + 20_000),
    ]
    # Again at the same time, or a little later: nothing new, nothing changed.
    assert meter(start + 25_000) == 0
    assert meter(start + 29_999) == 0
    assert intervals() == first
    # The container stops: its last, partial interval is metered once.
    stop = start + 37_321
    with world.engine.begin() as conn:
        conn.execute(
            update(containers)
            .where(containers.c.id == cid)
            .values(state="stopped", stopped_ms=stop)
        )
    assert meter(stop + 50_000) == 2
    final = intervals()
    assert [(a, b) for a, b, _ in final] == [
        (start, start + 10_000),
        (start + 10_000, start + 20_000),
        (start + 20_000, start + 30_000),
        (start + 30_000, stop),
    ]
    for later in (stop + 60_000, stop + 10**9):
        assert meter(later) == 0
    assert intervals() == final
    total = sum(c for _, _, c in final)
    assert total == interval_cost(rate, start, start, stop) == rate * (stop - start) // MS_PER_HOUR

    with world.engine.connect() as conn:
        report = bill(conn, world.principal)
        assert bill(conn, Principal("ac-someone-else", "user")).lines == []
    [line] = report.lines
    assert (line.function_id, line.containers, line.container_ms, line.cost_micros) == (
        fid,
        1,
        stop - start,
        total,
    )
    assert report.total_micros == total


def test_a_tick_during_a_stop_leaves_intervals_and_total_in_step(world: World) -> None:
    """Found by tests/chaos: the loop's metering tick and a container's stop (which meters it
    in the request's transaction) ran over one container at once on PostgreSQL; both cut
    intervals from the same start, the conflicting ones were dropped and the last writer's
    running total did not match the intervals kept. Now the tick skips a container another
    transaction holds (it never waits on a request), and the stop meters it whole."""
    if world.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: the two cannot overlap")
    fid = world.function()
    cid = world.container(fid, cpu=2.0, memory_mib=2048)
    start = world.now_ms
    world.host_synced(start + 10**9)
    with world.engine.begin() as conn:
        conn.execute(
            update(containers)
            .where(containers.c.id == cid)
            .values(state="running", started_ms=start)
        )
    stop = start + 15_500
    with world.engine.connect() as stopping:
        stopping.begin()
        stopping.execute(
            update(containers)
            .where(containers.c.id == cid)
            .values(state="stopped", stopped_ms=stop)
        )
        with world.engine.begin() as tick:
            # Without the fix the tick waits for the stop's row lock (here: an error, not a hang).
            tick.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            assert meter_containers(tick, start + 25_000, 10_000) == 0
        assert meter_containers(stopping, start + 25_000, 10_000, container_id=cid) == 2
        stopping.commit()
    with world.engine.begin() as conn:
        assert meter_containers(conn, start + 60_000, 10_000) == 0
        rows = conn.execute(
            select(
                meter_intervals.c.start_ms, meter_intervals.c.end_ms, meter_intervals.c.cost_micros
            )
            .where(meter_intervals.c.container_id == cid)
            .order_by(meter_intervals.c.start_ms)
        ).all()
        total = conn.execute(
            select(containers.c.metered_cost_micros).where(containers.c.id == cid)
        ).scalar_one()
    assert [(r.start_ms, r.end_ms) for r in rows] == [
        (start, start + 10_000),
        (start + 10_000, stop),
    ]
    assert total == sum(r.cost_micros for r in rows) > 0


def test_meter_containers_skips_never_started_and_restarts_cleanly(world: World) -> None:
    fid = world.function()
    never = world.container(fid)
    ran = world.container(fid)
    start = world.now_ms
    world.host_synced(start + 10**9)
    with world.engine.begin() as conn:
        conn.execute(
            update(containers)
            .where(containers.c.id == never)
            .values(state="stopped", stopped_ms=start + 5_000)
        )
        conn.execute(
            update(containers)
            .where(containers.c.id == ran)
            .values(state="running", started_ms=start)
        )
        assert meter_containers(conn, start + 30_000, 10_000) == 3
    # A replica that restarts and meters with another interval length picks up where the
    # store says metering stopped: no interval is charged twice.
    with world.engine.begin() as conn:
        assert meter_containers(conn, start + 30_000, 7_000) == 0
        assert meter_containers(conn, start + 44_000, 7_000) == 2
        rows = conn.execute(
            select(
                meter_intervals.c.container_id, meter_intervals.c.start_ms, meter_intervals.c.end_ms
            ).order_by(meter_intervals.c.start_ms)
        ).all()
    assert {r.container_id for r in rows} == {ran}
    bounds = [(r.start_ms, r.end_ms) for r in rows]
    assert bounds[0][0] == start and bounds[-1][1] == start + 44_000
    assert all(b == a2 for (_, b), (a2, _) in pairwise(bounds))
