"""The scheduler's pure core: scaling, placement, scale-down, failure to place."""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible.core.scheduling import (
    ContainerView,
    FunctionDemand,
    GpuChoice,
    HostCapacity,
    Plan,
    Policy,
    StopContainer,
    desired_containers,
    never_runs,
    plan,
    retry_delay_ms,
)

NOW = 10_000_000
POLICY = Policy(
    unschedulable_grace_ms=10_000, container_start_timeout_ms=120_000, target_drain_ms=2_000
)


def fn(
    id: str = "fn-a",
    *,
    cpu: float = 1.0,
    memory_mib: int = 1024,
    gpus: tuple[GpuChoice, ...] = (),
    queued: int = 0,
    running: int = 0,
    oldest_queued_ms: int | None = None,
    oldest_running_started_ms: int | None = None,
    avg_exec_ms: float | None = None,
    containers: tuple[ContainerView, ...] = (),
    max_containers: int = 100,
    scaledown_window_ms: int = 60_000,
    active: bool = True,
) -> FunctionDemand:
    if queued and oldest_queued_ms is None:
        oldest_queued_ms = NOW
    return FunctionDemand(
        id=id,
        cpu=cpu,
        memory_mib=memory_mib,
        gpus=gpus,
        queued=queued,
        running=running,
        oldest_queued_ms=oldest_queued_ms,
        oldest_running_started_ms=oldest_running_started_ms,
        avg_exec_ms=avg_exec_ms,
        containers=containers,
        max_containers=max_containers,
        scaledown_window_ms=scaledown_window_ms,
        active=active,
    )


def host(
    id: str = "ho-1",
    *,
    cpu: float = 64.0,
    memory_mib: int = 262_144,
    gpus: dict[str, int] | None = None,
    used_cpu: float = 0.0,
    used_memory_mib: int = 0,
    used_gpus: set[int] | None = None,
) -> HostCapacity:
    devices: list[tuple[int, str]] = []
    for model, n in (gpus or {}).items():
        devices += [(len(devices) + i, model) for i in range(n)]
    return HostCapacity(
        id=id,
        cpu=cpu,
        memory_mib=memory_mib,
        gpus=tuple(devices),
        used_cpu=used_cpu,
        used_memory_mib=used_memory_mib,
        used_gpus=set(used_gpus or ()),
    )


def ctr(
    id: str,
    *,
    state: str = "running",
    created_ms: int = NOW - 1_000_000,
    last_active_ms: int = NOW,
    busy: bool = False,
    host_id: str = "ho-1",
) -> ContainerView:
    return ContainerView(
        id=id,
        host_id=host_id,
        state=state,
        created_ms=created_ms,
        last_active_ms=last_active_ms,
        busy=busy,
    )


def idle(p: Plan) -> bool:
    """Nothing to start, stop or fail (the autoscaler's reasons aside)."""
    return p.start == [] and p.stop == [] and p.unschedulable == []


def starts_per_host(p: Plan) -> Counter[str]:
    return Counter(s.host_id for s in p.start)


# -- scaling ----------------------------------------------------------------------------------


def test_probe_container_when_nothing_is_known_about_speed() -> None:
    p = plan(NOW, [fn(queued=500)], [host()], POLICY)
    assert len(p.start) == 1 and p.stop == [] and p.unschedulable == []
    s = p.start[0]
    assert (s.function_id, s.host_id, s.cpu, s.memory_mib, s.gpu_model, s.gpu_indices) == (
        "fn-a",
        "ho-1",
        1.0,
        1024,
        None,
        (),
    )
    # A measured speed of 0 ms (too fast to measure) is no estimate either: still a probe.
    assert len(plan(NOW, [fn(queued=500, avg_exec_ms=0.0)], [host()], POLICY).start) == 1
    # Nothing to do, nothing started.
    assert idle(plan(NOW, [fn()], [host()], POLICY))


def test_scales_with_backlog_times_estimate_over_target_drain() -> None:
    # 10 queued * 1 s / 2 s drain target = 5 containers.
    assert len(plan(NOW, [fn(queued=10, avg_exec_ms=1000)], [host()], POLICY).start) == 5
    # 7 * 1.1 s / 2 s = 3.85 → 4.
    assert len(plan(NOW, [fn(queued=7, avg_exec_ms=1100)], [host()], POLICY).start) == 4
    # A drain target of 10 s needs fewer.
    slow = Policy(target_drain_ms=10_000)
    assert len(plan(NOW, [fn(queued=10, avg_exec_ms=1000)], [host()], slow).start) == 1
    # Before any call finished, the age of the oldest running call is the estimate:
    # (18 + 2) * 1.5 s / 2 s = 15.
    f = fn(queued=18, running=2, oldest_running_started_ms=NOW - 1500)
    assert len(plan(NOW, [f], [host()], POLICY).start) == 15
    # Once a mean is measured, it is the estimate: (18 + 2) * 1 s / 2 s = 10.
    f = fn(queued=18, running=2, avg_exec_ms=1000, oldest_running_started_ms=NOW - 1500)
    assert len(plan(NOW, [f], [host()], POLICY).start) == 10
    # Never more containers than inputs: 3 * 60 s / 2 s = 90, but 3 inputs.
    assert len(plan(NOW, [fn(queued=3, avg_exec_ms=60_000)], [host()], POLICY).start) == 3
    # Live containers count toward the target.
    live = tuple(ctr(f"ct-{i}", busy=True) for i in range(2))
    p = plan(NOW, [fn(queued=10, avg_exec_ms=1000, containers=live)], [host()], POLICY)
    assert len(p.start) == 3 and p.stop == []


def test_capped_by_max_containers_and_by_capacity() -> None:
    assert (
        len(plan(NOW, [fn(queued=100, avg_exec_ms=1000, max_containers=4)], [host()], POLICY).start)
        == 4
    )
    # Capacity: 2 free cores of 1 each → 2 now; the rest wait (not unschedulable).
    small = host(cpu=4, used_cpu=2)
    p = plan(NOW, [fn(queued=100, avg_exec_ms=1000, oldest_queued_ms=NOW - 10**6)], [small], POLICY)
    assert len(p.start) == 2 and p.unschedulable == []
    assert small.used_cpu == 4  # plan() takes capacity from the hosts it is given
    # Memory caps too.
    p = plan(
        NOW, [fn(queued=100, avg_exec_ms=1000, memory_mib=3000)], [host(memory_mib=10_000)], POLICY
    )
    assert len(p.start) == 3
    # Functions share hosts: the first (oldest work) takes what it needs, the next the rest.
    shared = [host(cpu=3)]
    p = plan(
        NOW,
        [fn("fn-a", queued=2, avg_exec_ms=2000), fn("fn-b", queued=2, avg_exec_ms=2000)],
        shared,
        POLICY,
    )
    assert Counter(s.function_id for s in p.start) == {"fn-a": 2, "fn-b": 1}


def test_gpu_fallback_order() -> None:
    want = (GpuChoice("H100", 1), GpuChoice("A100-80GB", 1))
    only_a100 = [host("ho-a100", gpus={"A100-80GB": 2})]
    [s] = plan(NOW, [fn(gpus=want, queued=1)], only_a100, POLICY).start
    assert (s.host_id, s.gpu_model, len(s.gpu_indices)) == ("ho-a100", "A100-80GB", 1)

    # The first choice wins wherever it fits, and the fallback takes over once it is used up.
    hosts = [host("ho-a100", gpus={"A100-80GB": 2}), host("ho-h100", gpus={"H100": 1})]
    p = plan(NOW, [fn(gpus=want, queued=4, avg_exec_ms=10_000)], hosts, POLICY)
    assert [s.gpu_model for s in p.start] == ["H100", "A100-80GB", "A100-80GB"]
    assert [s.host_id for s in p.start] == ["ho-h100", "ho-a100", "ho-a100"]
    assert sorted(i for s in p.start[1:] for i in s.gpu_indices) == [0, 1]
    assert p.unschedulable == []

    # Counts: H100:2 needs two free H100s on one host.
    hosts = [host("ho-1", gpus={"H100": 1}), host("ho-2", gpus={"H100": 4}, used_gpus={0, 1})]
    [s] = plan(NOW, [fn(gpus=(GpuChoice("H100", 2),), queued=1)], hosts, POLICY).start
    assert (s.host_id, s.gpu_indices) == ("ho-2", (2, 3))


def test_best_fit_packs_and_keeps_big_hosts_for_big_requests() -> None:
    hosts = [host("ho-big", cpu=64), host("ho-small", cpu=4)]
    [s] = plan(NOW, [fn(queued=1)], hosts, POLICY).start
    assert s.host_id == "ho-small"

    hosts = [host("ho-8", gpus={"H100": 8}), host("ho-1", gpus={"H100": 1})]
    small = fn("fn-small", gpus=(GpuChoice("H100", 1),), queued=1)
    big = fn("fn-big", gpus=(GpuChoice("H100", 8),), queued=1)
    p = plan(NOW, [small, big], hosts, POLICY)
    assert {(s.function_id, s.host_id) for s in p.start} == {
        ("fn-small", "ho-1"),
        ("fn-big", "ho-8"),
    }
    # Ties go to the lower host id, so plans are deterministic.
    p = plan(NOW, [fn(queued=1)], [host("ho-b", cpu=4), host("ho-a", cpu=4)], POLICY)
    assert p.start[0].host_id == "ho-a"


# -- unschedulable ---------------------------------------------------------------------------


def test_unschedulable_only_after_the_grace_and_only_when_nothing_can_ever_fit() -> None:
    too_big: dict[str, Any] = {"cpu": 128.0, "queued": 3}
    hosts = [host("ho-1", cpu=64), host("ho-2", cpu=32, gpus={"L4": 2})]
    early = plan(NOW, [fn(**too_big, oldest_queued_ms=NOW - 9_999)], hosts, POLICY)
    assert idle(early)
    late = plan(NOW, [fn(**too_big, oldest_queued_ms=NOW - 10_000)], hosts, POLICY)
    assert late.start == [] and [u.function_id for u in late.unschedulable] == ["fn-a"]
    message = late.unschedulable[0].message
    assert "cpu=128" in message and "64 cores" in message and "1xL4" not in message
    assert "2xL4" in message  # what the largest hosts have, to help fix the request
    # Sizes of whole hosts, not each figure's maximum over different hosts.
    odd = [host("ho-1", cpu=100, memory_mib=2), host("ho-2", cpu=2, memory_mib=3_000_000)]
    text = (
        plan(NOW, [fn(**too_big, oldest_queued_ms=NOW - 10_000)], odd, POLICY)
        .unschedulable[0]
        .message
    )
    assert "the host with the most cores has 100 cores and 2 MiB memory" in text, text
    assert "the one with the most memory 2 cores and 3000000 MiB" in text, text

    # Busy but big enough hosts: the calls wait, however long.
    busy = [host("ho-1", gpus={"H100": 2}, used_gpus={0, 1})]
    f = fn(gpus=(GpuChoice("H100", 2),), queued=1, oldest_queued_ms=NOW - 10**9)
    assert idle(plan(NOW, [f], busy, POLICY))
    # A fallback that some host could run keeps it schedulable.
    f = fn(
        gpus=(GpuChoice("H100", 16), GpuChoice("H100", 2)), queued=1, oldest_queued_ms=NOW - 10**9
    )
    assert plan(NOW, [f], busy, POLICY).unschedulable == []
    # Every choice impossible: unschedulable, and the message lists them.
    f = fn(
        gpus=(GpuChoice("H100", 16), GpuChoice("B200", 1)), queued=1, oldest_queued_ms=NOW - 10**9
    )
    [u] = plan(NOW, [f], busy, POLICY).unschedulable
    assert "H100:16 or B200:1" in u.message
    # No host at all.
    [u] = plan(NOW, [fn(queued=1, oldest_queued_ms=NOW - 10**9)], [], POLICY).unschedulable
    assert "no host is registered" in u.message
    # A big host that is only briefly away (known, not live) keeps the calls waiting for it.
    lost_big = [host("ho-big", cpu=256)]
    f = fn(**too_big, oldest_queued_ms=NOW - 10**9)
    assert idle(plan(NOW, [f], hosts, POLICY, known_hosts=hosts + lost_big))
    [u] = plan(NOW, [f], hosts, POLICY, known_hosts=hosts).unschedulable


# -- scale-down and replacement --------------------------------------------------------------


def test_idle_containers_stop_after_the_window() -> None:
    window = 60_000
    containers = (
        ctr("ct-old", last_active_ms=NOW - window),
        ctr("ct-recent", last_active_ms=NOW - window + 1),
        ctr("ct-busy", last_active_ms=NOW - 10 * window, busy=True),
        ctr("ct-pending", state="pending", created_ms=NOW - 1000, last_active_ms=NOW - 10 * window),
    )
    p = plan(NOW, [fn(containers=containers, scaledown_window_ms=window)], [host()], POLICY)
    assert p.stop == [StopContainer("ct-old", "idle")] and p.start == []

    # With a backlog, only the surplus over the target stops, the longest idle first.
    idle = tuple(ctr(f"ct-{i}", last_active_ms=NOW - window - i) for i in range(4))
    p = plan(NOW, [fn(queued=1, containers=idle)], [host()], POLICY)
    assert p.stop == [
        StopContainer("ct-3", "idle"),
        StopContainer("ct-2", "idle"),
        StopContainer("ct-1", "idle"),
    ]
    # A window of zero scales to zero at once.
    p = plan(
        NOW,
        [fn(containers=(ctr("ct-1", last_active_ms=NOW),), scaledown_window_ms=0)],
        [host()],
        POLICY,
    )
    assert p.stop == [StopContainer("ct-1", "idle")]


def test_containers_that_never_start_are_replaced() -> None:
    timeout = POLICY.container_start_timeout_ms
    containers = (
        ctr("ct-stuck", state="pending", created_ms=NOW - timeout),
        ctr("ct-slow", state="starting", created_ms=NOW - timeout + 1),
        ctr("ct-ok", state="running", created_ms=NOW - 100 * timeout, busy=True),
    )
    p = plan(
        NOW, [fn(queued=10, running=1, avg_exec_ms=400, containers=containers)], [host()], POLICY
    )
    # Target: 11 * 400 / 2000 = 2.2 → 3, two live after the stuck one goes → one replacement.
    assert p.stop == [StopContainer("ct-stuck", "start_timeout")]
    assert len(p.start) == 1


def test_a_stopped_app_stops_all_its_containers() -> None:
    timeout = POLICY.container_start_timeout_ms
    containers = (
        ctr("ct-1", busy=True),
        ctr("ct-2", state="starting", created_ms=NOW - 5),
        ctr("ct-3", state="pending", created_ms=NOW - timeout),
    )
    p = plan(
        NOW,
        [fn(queued=50, avg_exec_ms=1000, containers=containers, active=False)],
        [host()],
        POLICY,
    )
    assert p.start == [] and p.unschedulable == []
    assert sorted(p.stop, key=lambda s: s.container_id) == [
        StopContainer("ct-1", "app_stopped"),
        StopContainer("ct-2", "app_stopped"),
        StopContainer("ct-3", "start_timeout"),
    ]


# -- properties -------------------------------------------------------------------------------

MODELS = ("H100", "A100-80GB", "L4")
QUARTERS = st.integers(1, 64).map(lambda q: q / 4)  # exact in binary: sums never round


@st.composite
def hosts_strategy(draw: st.DrawFn) -> list[HostCapacity]:
    out = []
    for n in range(draw(st.integers(0, 6))):
        cpu_q = draw(st.integers(1, 256))
        memory = draw(st.integers(1024, 1 << 20))
        models = draw(st.lists(st.sampled_from(MODELS), max_size=8))
        indices = draw(
            st.lists(st.integers(0, 63), min_size=len(models), max_size=len(models), unique=True)
        )
        gpus = tuple(zip(indices, models, strict=True))
        used = draw(st.sets(st.sampled_from(indices))) if indices else set()
        out.append(
            HostCapacity(
                id=f"ho-{n}",
                cpu=cpu_q / 4,
                memory_mib=memory,
                gpus=gpus,
                used_cpu=draw(st.integers(0, cpu_q) | st.just(0)) / 4,
                used_memory_mib=draw(st.integers(0, memory) | st.just(0)),
                used_gpus=used,
            )
        )
    return out


@st.composite
def functions_strategy(draw: st.DrawFn, host_ids: list[str]) -> list[FunctionDemand]:
    out = []
    for n in range(draw(st.integers(0, 6))):
        containers = tuple(
            ctr(
                f"ct-{n}-{i}",
                state=draw(st.sampled_from(["pending", "starting", "running"])),
                created_ms=NOW - draw(st.integers(0, 300_000)),
                last_active_ms=NOW - draw(st.integers(0, 300_000)),
                busy=draw(st.booleans()),
                host_id=draw(st.sampled_from(host_ids)) if host_ids else "ho-gone",
            )
            for i in range(draw(st.integers(0, 4)))
        )
        queued = draw(st.integers(0, 60) | st.integers(1, 5))
        running = draw(st.integers(0, 8))
        out.append(
            fn(
                f"fn-{n}",
                cpu=draw(QUARTERS),
                memory_mib=draw(st.integers(16, 1 << 14)),
                gpus=tuple(
                    draw(
                        st.lists(
                            st.builds(GpuChoice, st.sampled_from(MODELS), st.integers(1, 4)),
                            max_size=3,
                        )
                    )
                ),
                queued=queued,
                running=running,
                oldest_queued_ms=NOW - draw(st.integers(0, 60_000)) if queued else None,
                oldest_running_started_ms=NOW - draw(st.integers(0, 60_000)) if running else None,
                avg_exec_ms=draw(st.none() | st.floats(0, 120_000)),
                containers=containers,
                max_containers=draw(st.integers(1, 40)),
                scaledown_window_ms=draw(st.integers(0, 120_000)),
                active=draw(st.sampled_from([True, True, True, False])),
            )
        )
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[FunctionDemand], list[HostCapacity]]:
    hosts = draw(hosts_strategy())
    return draw(functions_strategy([h.id for h in hosts])), hosts


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_plans_never_oversubscribe_a_host(
    scenario: tuple[list[FunctionDemand], list[HostCapacity]],
) -> None:
    functions, hosts = scenario
    before = {h.id: copy.deepcopy(h) for h in hosts}
    by_id = {f.id: f for f in functions}
    p = plan(NOW, functions, hosts, POLICY)

    for h in before.values():
        mine = [s for s in p.start if s.host_id == h.id]
        assert h.used_cpu + sum(s.cpu for s in mine) <= h.cpu
        assert h.used_memory_mib + sum(s.memory_mib for s in mine) <= h.memory_mib
        handed = [i for s in mine for i in s.gpu_indices]
        assert len(handed) == len(set(handed)), "a GPU index was assigned twice"
        assert not set(handed) & h.used_gpus, "a GPU in use was assigned again"
        models = dict(h.gpus)
        for s in mine:
            assert all(models[i] == s.gpu_model for i in s.gpu_indices)
    for s in p.start:
        f = by_id[s.function_id]
        assert s.host_id in before and f.active and f.queued + f.running > 0
        assert (s.cpu, s.memory_mib) == (f.cpu, f.memory_mib)
        if f.gpus:
            assert GpuChoice(str(s.gpu_model), len(s.gpu_indices)) in f.gpus
        else:
            assert (s.gpu_model, s.gpu_indices) == (None, ())
    replaced = {s.container_id for s in p.stop if s.reason == "start_timeout"}
    for fid, n in Counter(s.function_id for s in p.start).items():
        f = by_id[fid]
        live = [c for c in f.containers if c.id not in replaced]
        assert len(live) + n <= max(1, min(f.max_containers, f.queued + f.running))
    stopped = [s.container_id for s in p.stop]
    assert len(stopped) == len(set(stopped))
    owned = {c.id: f for f in functions for c in f.containers}
    assert set(stopped) <= set(owned)
    for f in functions:
        if not f.active:
            assert {c.id for c in f.containers} <= set(stopped)
    for u in p.unschedulable:
        f = by_id[u.function_id]
        assert f.queued > 0 and NOW - (f.oldest_queued_ms or NOW) >= POLICY.unschedulable_grace_ms
        choices = f.gpus or (None,)
        for h in before.values():
            for c in choices:
                fits_cpu = f.cpu <= h.cpu and f.memory_mib <= h.memory_mib
                fits_gpu = c is None or sum(1 for _, m in h.gpus if m == c.model) >= c.count
                assert not (fits_cpu and fits_gpu), "a host could run it"


@settings(max_examples=300, deadline=None, database=None)
@given(
    initial=st.floats(0, 3600),
    coefficient=st.floats(1, 10),
    cap=st.floats(0, 3600),
)
def test_retry_delay_is_monotone_and_capped(initial: float, coefficient: float, cap: float) -> None:
    delays = [retry_delay_ms(a, initial, coefficient, cap) for a in range(1, 101)]
    assert delays == sorted(delays)
    assert all(0 <= d <= cap * 1000 for d in delays)
    assert delays[0] == int(min(initial, cap) * 1000)


def test_retry_delay_examples() -> None:
    assert [retry_delay_ms(a, 1.0, 2.0, 60.0) for a in range(1, 9)] == [
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        60000,
        60000,
    ]
    assert retry_delay_ms(1, 0.0, 2.0, 60.0) == 0
    assert retry_delay_ms(5, 1.5, 1.0, 60.0) == 1500
    with pytest.raises(ValueError):
        retry_delay_ms(0, 1.0, 2.0, 60.0)
    assert math.isfinite(retry_delay_ms(100, 3600, 10, 3600))


# -- idle containers yield to queued work ------------------------------------------------------


def held(
    id: str,
    *,
    last_active_ms: int,
    cpu: float = 1.0,
    memory_mib: int = 1024,
    gpu_indices: tuple[int, ...] = (),
    busy: bool = False,
    host_id: str = "ho-1",
) -> ContainerView:
    """A running container that holds resources (idle unless ``busy``)."""
    return replace(
        ctr(id, last_active_ms=last_active_ms, busy=busy, host_id=host_id),
        cpu=cpu,
        memory_mib=memory_mib,
        gpu_indices=gpu_indices,
    )


def owned(f: FunctionDemand, account: str) -> FunctionDemand:
    return replace(f, account_id=account)


def full_host(
    *containers: ContainerView, cpu: float = 2.0, gpus: dict[str, int] | None = None
) -> HostCapacity:
    return host(
        cpu=cpu,
        memory_mib=8192,
        gpus=gpus,
        used_cpu=sum(c.cpu for c in containers),
        used_memory_mib=sum(c.memory_mib for c in containers),
        used_gpus={i for c in containers for i in c.gpu_indices},
    )


def test_the_idlest_container_of_another_function_yields_to_queued_work() -> None:
    older = held("ct-old", last_active_ms=NOW - 5_000)
    newer = held("ct-new", last_active_ms=NOW - 1_000)
    # fn-b has no work left: both containers wait out a long scale-down window.
    warm = fn("fn-b", containers=(newer, older), scaledown_window_ms=3_600_000)
    queued = fn("fn-a", queued=3)
    h = full_host(older, newer)
    p = plan(NOW, [queued, warm], [h], POLICY)
    assert p.stop == [StopContainer("ct-old", "yield")]  # one container's room is enough
    assert p.start == [] and p.unschedulable == []  # placed once the room is really free
    # Next tick: the stopped one is still ending (its room is counted as being freed).
    h = full_host(older, newer)
    h.freeing_cpu, h.freeing_memory_mib = 1.0, 1024
    p = plan(
        NOW + 100,
        [queued, fn("fn-b", containers=(newer,), scaledown_window_ms=3_600_000)],
        [h],
        POLICY,
    )
    assert idle(p)  # no second eviction, no start on a host still full
    # Once it ended, the queued work is placed.
    p = plan(
        NOW + 200,
        [queued, fn("fn-b", containers=(newer,), scaledown_window_ms=3_600_000)],
        [full_host(newer)],
        POLICY,
    )
    assert [(s.function_id, s.host_id) for s in p.start] == [("fn-a", "ho-1")] and p.stop == []


def test_idle_containers_on_a_draining_host_do_not_yield_to_work_it_cannot_take() -> None:
    idle_one = held("ct-idle", last_active_ms=NOW - 5_000)
    warm = fn("fn-b", containers=(idle_one,), scaledown_window_ms=3_600_000)
    busy = held("ct-busy", last_active_ms=NOW, busy=True, host_id="ho-2")
    working = fn("fn-c", containers=(busy,), running=1, oldest_running_started_ms=NOW - 10)
    draining = replace(full_host(idle_one, cpu=idle_one.cpu), draining=True)
    other = replace(full_host(busy, cpu=busy.cpu), id="ho-2")
    p = plan(NOW, [fn("fn-a", queued=1), warm, working], [draining, other], POLICY)
    assert p.stop == [] and p.start == []  # stopping it would free room nothing may use
    assert "every live host that can run this function is busy" in p.waiting["fn-a"]


def test_busy_or_wanted_containers_never_yield() -> None:
    busy = held("ct-busy", last_active_ms=NOW - 50_000, busy=True)
    kept = held("ct-kept", last_active_ms=NOW - 50_000)
    working = fn("fn-b", containers=(busy,), running=1, oldest_running_started_ms=NOW - 50_000)
    # min_containers=1: fn-c wants its one idle container.
    minimum = replace(fn("fn-c", containers=(kept,)), min_containers=1)
    p = plan(NOW, [fn("fn-a", queued=1), working, minimum], [full_host(busy, kept)], POLICY)
    assert idle(p)


def test_containers_kept_for_a_burst_that_ended_yield_to_others_work() -> None:
    """A finished 20,000-input map: nothing queued or running, but its arrival rate decays
    over tens of seconds and kept all of its containers wanted, and another tenant's single
    call waited 45 s for a full host. Those beyond min_containers yield like idle ones."""
    a = held("ct-a", last_active_ms=NOW - 2_000)
    b = held("ct-b", last_active_ms=NOW - 1_000)
    burst = replace(
        fn("fn-b", containers=(a, b), avg_exec_ms=5.0, scaledown_window_ms=3_600_000),
        arrivals_per_s=2_000.0,
        start_ms=300.0,
    )
    assert desired_containers(burst, NOW, POLICY).containers >= 2  # still wanted
    p = plan(NOW, [fn("fn-a", queued=1), burst], [full_host(a, b)], POLICY)
    assert p.stop == [StopContainer("ct-a", "yield")]
    # With work in flight, or min_containers asking for them, they keep their room.
    busy = replace(burst, running=1, oldest_running_started_ms=NOW - 10)
    assert idle(plan(NOW, [fn("fn-a", queued=1), busy], [full_host(a, b)], POLICY))
    kept = replace(burst, min_containers=2)
    assert idle(plan(NOW, [fn("fn-a", queued=1), kept], [full_host(a, b)], POLICY))


def test_no_eviction_when_room_exists_or_when_turned_off() -> None:
    spare = held("ct-idle", last_active_ms=NOW - 5_000)
    warm = fn("fn-b", containers=(spare,), scaledown_window_ms=3_600_000)
    # Room on the host: placed at once, nothing stopped.
    p = plan(NOW, [fn("fn-a", queued=1), warm], [full_host(spare)], POLICY)
    assert [s.function_id for s in p.start] == ["fn-a"] and p.stop == []
    # Full host, eviction off: the work waits for the scale-down window.
    off = replace(POLICY, evict_idle=False)
    p = plan(NOW, [fn("fn-a", queued=1), warm], [full_host(spare, cpu=1.0)], off)
    assert idle(p)
    # A placer that refuses although there is room (price, region...): stopping idle
    # containers would not help, so none is stopped.
    gpu = host(gpus={"H100": 2}, used_gpus={0}, cpu=2.0, used_cpu=1.0, used_memory_mib=1024)
    gpu_idle = held("ct-gpu", last_active_ms=NOW - 5_000, gpu_indices=(0,))
    p = plan(
        NOW,
        [
            fn("fn-a", queued=1, gpus=(GpuChoice("H100", 1),)),
            fn("fn-b", containers=(gpu_idle,), scaledown_window_ms=3_600_000),
        ],
        [gpu],
        POLICY,
        gpu_placer=lambda f, hs: None,
    )
    assert idle(p)


def test_evictions_follow_the_queue_and_prefer_the_host_needing_fewest() -> None:
    # ho-1: two small idle containers (longest idle); ho-2: one big one, idle more recently.
    small1 = held("ct-s1", last_active_ms=NOW - 9_000)
    small2 = held("ct-s2", last_active_ms=NOW - 8_000)
    big = held("ct-big", last_active_ms=NOW - 1_000, cpu=2.0, host_id="ho-2")
    hosts = [
        full_host(small1, small2),
        replace(full_host(big), id="ho-2"),
    ]
    warm = fn("fn-b", containers=(small1, small2, big), scaledown_window_ms=3_600_000)
    p = plan(NOW, [fn("fn-a", cpu=2.0, queued=1), warm], hosts, POLICY)
    assert p.stop == [StopContainer("ct-big", "yield")]  # one stop instead of two
    # Two queued inputs of a 1-core function: the two longest idle containers make room.
    p = plan(
        NOW,
        [fn("fn-a", queued=2, avg_exec_ms=10_000.0), warm],
        [full_host(small1, small2), replace(full_host(big), id="ho-2")],
        POLICY,
    )
    assert {s.container_id for s in p.stop} == {"ct-s1", "ct-s2"}
    assert all(s.reason == "yield" for s in p.stop)


def test_gpu_containers_yield_only_to_their_own_account() -> None:
    gpu_idle = held("ct-gpu", last_active_ms=NOW - 5_000, gpu_indices=(0,))
    warm = owned(fn("fn-b", containers=(gpu_idle,), scaledown_window_ms=3_600_000), "acct-1")
    h = full_host(gpu_idle, cpu=8.0, gpus={"H100": 1})
    want = fn("fn-a", queued=1, gpus=(GpuChoice("H100", 1),))
    p = plan(NOW, [owned(want, "acct-2"), warm], [copy.deepcopy(h)], POLICY)
    assert idle(p)  # another renter's lease is not taken
    p = plan(NOW, [owned(want, "acct-1"), warm], [copy.deepcopy(h)], POLICY)
    assert p.stop == [StopContainer("ct-gpu", "yield")]
    # A CPU-only idle container yields to anyone's work.
    cpu_idle = held("ct-cpu", last_active_ms=NOW - 5_000, cpu=8.0)
    other = owned(fn("fn-c", containers=(cpu_idle,), scaledown_window_ms=3_600_000), "acct-1")
    p = plan(
        NOW, [owned(fn("fn-a", queued=1), "acct-2"), other], [full_host(cpu_idle, cpu=8.0)], POLICY
    )
    assert p.stop == [StopContainer("ct-cpu", "yield")]


# -- why queued work waits ---------------------------------------------------------------------


def test_waiting_work_says_why() -> None:
    queued = fn("fn-a", queued=2)
    # No host at all, within the grace: the calls will fail; meanwhile they say why.
    p = plan(NOW, [queued], [], POLICY)
    assert p.unschedulable == [] and "no host is registered" in p.waiting["fn-a"]
    # The only host that could run it stopped answering (lost, still known).
    lost = host()
    p = plan(NOW, [queued], [], POLICY, known_hosts=[lost])
    assert p.unschedulable == [] and p.start == []
    assert p.waiting["fn-a"].startswith("no live host can run this function")
    # A live host, full of busy work.
    busy = held("ct-busy", last_active_ms=NOW, busy=True, cpu=2.0)
    working = fn("fn-b", containers=(busy,), running=1, oldest_running_started_ms=NOW)
    p = plan(NOW, [queued, working], [full_host(busy)], POLICY)
    assert "busy" in p.waiting["fn-a"] and "fn-b" not in p.waiting
    # Full of idle containers: they make room, and the reason says so.
    spare = held("ct-idle", last_active_ms=NOW - 5_000, cpu=2.0)
    warm = fn("fn-b", containers=(spare,), scaledown_window_ms=3_600_000)
    p = plan(NOW, [queued, warm], [full_host(spare)], POLICY)
    assert "idle containers of other functions are being stopped" in p.waiting["fn-a"]
    # Placed: nothing to explain.
    assert plan(NOW, [queued], [host()], POLICY).waiting == {}


def test_never_runs_tells_a_fleet_too_small_from_an_empty_or_busy_one() -> None:
    """What `crucible pod create` fails on at once (PodInfo.unplaceable): only a verdict on
    the hosts the exchange knows; an empty fleet (hosts not joined yet), a lost host or a busy
    one only make the work wait."""
    big = replace(fn("fn-pod", cpu=9.0), min_containers=1, noun="pod")
    assert never_runs(plan(NOW, [big], [host(cpu=2.0)], POLICY).waiting["fn-pod"])
    region = replace(fn("fn-pod"), min_containers=1, noun="pod", region="mars")
    assert never_runs(plan(NOW, [region], [host()], POLICY).waiting["fn-pod"])
    assert not never_runs(plan(NOW, [big], [], POLICY).waiting["fn-pod"])  # no host yet
    lost = plan(NOW, [replace(big, cpu=1.0, queued=1)], [], POLICY, known_hosts=[host()])
    assert not never_runs(lost.waiting["fn-pod"])
    busy = held("ct-busy", last_active_ms=NOW, busy=True, cpu=2.0)
    working = fn("fn-b", containers=(busy,), running=1, oldest_running_started_ms=NOW)
    queued = fn("fn-a", queued=2)
    assert not never_runs(plan(NOW, [queued, working], [full_host(busy)], POLICY).waiting["fn-a"])
    assert not never_runs(None)


def test_a_pods_disk_is_placed_only_where_that_much_disk_is_free() -> None:
    small, big = host("ho-1"), host("ho-2")
    small.disk_mib, big.disk_mib = 100 * 1024, 500 * 1024
    pod = replace(fn("fn-pod", queued=1), disk_mib=200 * 1024, noun="pod")
    p = plan(NOW, [pod], [small, big], POLICY)
    assert [s.host_id for s in p.start] == ["ho-2"]  # ho-1 would win a tie, but lacks disk
    # More than any host has: never placed, and the reason names the disk.
    huge = replace(pod, disk_mib=1000 * 1024)
    p = plan(NOW, [huge], [host("ho-1"), host("ho-2")], POLICY)  # hosts that did not say
    assert [s.host_id for s in p.start] == ["ho-1"]
    p = plan(NOW, [huge], [small, big], POLICY)
    assert p.start == []
    reason = p.waiting["fn-pod"]
    assert reason.startswith("no host can ever run this pod") and "disk=1,000 GiB" in reason
    assert "free disk: 500 GiB at most" in reason
    tiny = replace(pod, disk_mib=64 * 1024 * 1024)  # 64 TiB: in words, not 6.554e+04
    assert "disk=65,536 GiB" in plan(NOW, [tiny], [small, big], POLICY).waiting["fn-pod"]
    # Work that asks for no disk runs on a host that reported none free.
    full = host("ho-3")
    full.disk_mib = 0
    assert [s.host_id for s in plan(NOW, [fn(queued=1)], [full], POLICY).start] == ["ho-3"]


def test_room_made_by_a_yield_goes_to_the_work_it_was_made_for() -> None:
    gpu_idle = held("ct-gpu", last_active_ms=NOW - 5_000, gpu_indices=(0,))
    warm = owned(fn("fn-b", containers=(gpu_idle,), scaledown_window_ms=3_600_000), "acct-1")
    h100 = (GpuChoice("H100", 1),)
    # The stranger's work is older (first in the queue); the owner's made the room.
    stranger = owned(fn("fn-s", queued=1, gpus=h100, oldest_queued_ms=NOW - 9_000), "acct-2")
    mine = owned(fn("fn-a", queued=1, gpus=h100), "acct-1")
    p = plan(NOW, [stranger, mine, warm], [full_host(gpu_idle, cpu=8.0, gpus={"H100": 1})], POLICY)
    assert p.stop == [StopContainer("ct-gpu", "yield")] and p.made_room == {"fn-a"}
    # The container has ended: the freed H100 goes to fn-a, promised, not to older work.
    free = full_host(cpu=8.0, gpus={"H100": 1})
    p = plan(NOW + 500, [stranger, mine], [copy.deepcopy(free)], POLICY, promised={"fn-a"})
    assert [s.function_id for s in p.start] == ["fn-a"]
    # Without the promise, queue order would have given it to the stranger.
    p = plan(NOW + 500, [stranger, mine], [copy.deepcopy(free)], POLICY)
    assert [s.function_id for s in p.start] == ["fn-s"]


def test_only_containers_whose_room_is_needed_yield() -> None:
    # The longest idle holds only CPU; the GPU work needs the other one's H100.
    cpu_only = held("ct-cpu", last_active_ms=NOW - 9_000, cpu=1.0)
    gpu_idle = held("ct-gpu", last_active_ms=NOW - 1_000, cpu=1.0, gpu_indices=(0,))
    warm = fn("fn-b", containers=(cpu_only, gpu_idle), scaledown_window_ms=3_600_000)
    h = full_host(cpu_only, gpu_idle, cpu=4.0, gpus={"H100": 1})
    p = plan(NOW, [fn("fn-a", queued=1, gpus=(GpuChoice("H100", 1),)), warm], [h], POLICY)
    assert p.stop == [StopContainer("ct-gpu", "yield")]
