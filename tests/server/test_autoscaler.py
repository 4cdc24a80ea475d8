"""The autoscaler's pure core: each term, the bounds, and the reasons it gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.core.autoscaler import ArrivalRate, Load, ScalingPolicy, decide

POLICY = ScalingPolicy(max_containers=50, target_drain_ms=2_000)


def test_each_term_and_its_reason() -> None:
    assert decide(POLICY, Load(queued=0, running=0)).containers == 0
    probe = decide(POLICY, Load(queued=7, running=0))
    assert probe.containers == 1 and "probe" in probe.reason
    backlog = decide(POLICY, Load(queued=8, running=2, avg_exec_ms=1_000))
    assert backlog.containers == 5 and backlog.reason.startswith("backlog")
    # Never more containers than calls.
    assert decide(POLICY, Load(queued=2, running=0, avg_exec_ms=60_000)).containers == 2
    # 20 calls/s of 500 ms, containers taking 1.5 s to start: 40 in flight.
    arrivals = decide(
        POLICY, Load(queued=0, running=3, arrivals_per_s=20, avg_exec_ms=500, start_ms=1_500)
    )
    assert arrivals.containers == 40 and arrivals.reason.startswith("arrivals")
    # Before any call finished, the oldest running call's age is the estimate.
    aged = decide(POLICY, Load(queued=9, running=1, oldest_running_age_ms=800))
    assert aged.containers == 4


def test_a_trickle_of_calls_keeps_nothing_warm() -> None:
    # One call every 10 s of 1 ms, containers starting in 200 ms: 0.02 busy on average.
    trickle = Load(queued=0, running=0, arrivals_per_s=0.1, avg_exec_ms=1, start_ms=200)
    assert decide(POLICY, trickle).containers == 0
    busy = Load(queued=0, running=0, arrivals_per_s=2, avg_exec_ms=200, start_ms=100)
    assert decide(POLICY, busy).containers == 1  # 0.6 of a container: keep one


def test_min_buffer_and_max() -> None:
    warm = ScalingPolicy(min_containers=2, buffer_containers=1, max_containers=5)
    idle = decide(warm, Load(queued=0, running=0))
    assert idle.containers == 2 and "min_containers=2" in idle.reason
    busy = decide(warm, Load(queued=3, running=0, avg_exec_ms=1_000))
    assert busy.containers == 3 and "+1 buffer" in busy.reason
    capped = decide(warm, Load(queued=500, running=0, avg_exec_ms=1_000))
    assert capped.containers == 5 and capped.reason.startswith("max_containers=5")
    assert decide(warm, Load(queued=9, running=0, active=False)).containers == 0


@settings(max_examples=300, deadline=None, database=None)
@given(
    lo=st.integers(0, 10),
    span=st.integers(0, 40),
    buffer=st.integers(0, 5),
    queued=st.integers(0, 10_000),
    running=st.integers(0, 1_000),
    rate=st.floats(0, 1_000),
    est=st.none() | st.floats(0, 600_000),
)
def test_always_within_bounds_and_monotone_in_the_queue(
    lo: int, span: int, buffer: int, queued: int, running: int, rate: float, est: float | None
) -> None:
    policy = ScalingPolicy(min_containers=lo, max_containers=lo + span, buffer_containers=buffer)
    load = Load(queued=queued, running=running, arrivals_per_s=rate, avg_exec_ms=est)
    n = decide(policy, load).containers
    assert lo <= n <= lo + span
    more = Load(queued=queued + 1, running=running, arrivals_per_s=rate, avg_exec_ms=est)
    assert decide(policy, more).containers >= n


def test_arrival_rate_decays_with_time() -> None:
    r = ArrivalRate(tau_ms=1_000)
    assert r.per_s(0) == 0.0
    for t in range(0, 10_000, 100):
        r.observe(1, t)  # 10 calls per second
    assert 9.0 < r.per_s(9_900) < 10.6
    assert r.per_s(14_900) < 0.1
