"""The discrete-event simulator over the real cores, on tiny fleets (no trace data needed:
trace runs get their nodes and pods from injected loaders)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.core.placement import FULL, NodeSpec, Request
from crucible.sim.engine import SimResult, run
from crucible.sim.events import EventQueue, Sample
from crucible.sim.scenario import ScenarioError, parse_scenario
from crucible.sim.trace import TracePod

MARKET = """
name = "tiny market"
kind = "market"
duration_hours = 36
power_watts = { H100 = 700, L4 = 72 }

[[fleet]]
name = "cloud"
gpus = 64
sites = 2
mix = { H100 = 1 }
prices = { H100 = 1.89 }
carbon_g_per_kwh = [500, 600]

[[fleet]]
name = "green"
gpus = 32
sites = 2
mix = { H100 = 1 }
prices = { H100 = 2.50 }
carbon_g_per_kwh = [20, 30]

[[fleet]]
name = "p2p"
gpus = 32
sites = 4
gpus_per_host = 4
mix = { H100 = 0.5, L4 = 0.5 }
prices = { H100 = 0.70, L4 = 0.20 }
price_jitter = 0.2
interruptible_min = 0.4

[workload]
[[workload.classes]]
name = "train"
load = 0.45
gpus = [8]
nodes = [1, 2]
models = ["H100"]
duration_hours = 6
patience_hours = 12

[[workload.classes]]
name = "batch"
tier = "interruptible"
load = 0.6
gpus = [1, 2, 4]
models = ["H100", "L4"]
duration_hours = 2
bid = [0.3, 0.9]
"""

PLACEMENT = """
name = "tiny placement"
kind = "placement"
duration_hours = 24

[[fleet]]
name = "dc"
gpus = 64
sites = 2
cpu_per_host = 64
memory_gib_per_host = 512
mix = { A100 = 0.5, T4 = 0.5 }
prices = { A100 = 1.29, T4 = 0.35 }

[workload]
[[workload.classes]]
name = "share"
load = 0.3
gpu_milli = 300
duration_hours = 1

[[workload.classes]]
name = "gang"
load = 0.6
gpus = [4, 8]
nodes = [1, 2, 3]
models = ["A100"]
duration_hours = 3
"""


def market(policy: str = "cost-first", seed: int = 1) -> SimResult:
    return run(parse_scenario(MARKET, "m.toml"), seed=seed, policy=policy)


def test_same_seed_same_run_and_another_seed_differs() -> None:
    a, b = market(seed=7), market(seed=7)
    assert a.summary == b.summary and a.series == b.series
    assert market(seed=8).summary != a.summary
    p = parse_scenario(PLACEMENT, "p.toml")
    assert run(p, seed=3) == run(p, seed=3)


def test_market_run_preempts_and_money_adds_up() -> None:
    r = market()
    m = r.summary["market"]
    jobs = m["jobs"]
    assert jobs["arrived"] > 50 and jobs["preemptions"] > 0 and jobs["restarted"] > 0
    assert jobs["started"] <= jobs["arrived"]
    assert jobs["finished"] + jobs["gave_up"] <= jobs["arrived"]
    # renters pay exactly what hosts earn plus the platform's fee
    paid = sum(t["cost_usd"] for t in m["renters"].values())
    earned = sum(m["hosts_revenue_usd"].values()) + m["platform_fees_usd"]
    assert paid == pytest.approx(earned, abs=0.05)
    assert m["platform_fees_usd"] == pytest.approx(0.10 * paid, rel=0.01)
    # on-demand clears at the asks (1.89 / 2.50 / p2p's jittered 0.56-0.84)
    od = m["clearing_prices_per_gpu_hour"]["on_demand"]
    assert 0.55 <= od["min_usd"] <= od["max_usd"] <= 2.5
    assert 0 < r.summary["gpu_utilisation_mean"] <= 1
    assert all(0 <= u <= 1 + 1e-9 for u in r.series["utilisation"] if u is not None)
    assert len(r.series["t_hours"]) == 36 and r.series["t_hours"][-1] == 36


def test_carbon_first_is_greener_and_cost_first_is_cheaper() -> None:
    cheap, green = market("cost-first"), market("carbon-first")
    assert (
        green.summary["market"]["carbon_g_per_gpu_hour"]
        < cheap.summary["market"]["carbon_g_per_gpu_hour"]
    )
    od = "on_demand"
    assert (
        cheap.summary["market"]["renters"][od]["usd_per_gpu_hour"]
        < green.summary["market"]["renters"][od]["usd_per_gpu_hour"]
    )


def test_placement_run_with_gangs_and_shares() -> None:
    r = run(parse_scenario(PLACEMENT, "p.toml"), policy="fgd")
    p = r.summary["placement"]
    assert p["gangs_started"] > 0 and p["started"] > 100
    assert p["arrived"] == p["started"] + p["gave_up"] + p["still_waiting"]
    assert p["started"] == p["finished"] + p["still_running"]
    assert 0 < r.summary["gpu_utilisation_mean"] < 1
    assert r.summary["queueing_delay"]["started"] == p["started"]


@pytest.mark.parametrize("policy", ["best-fit", "spread", "fgd", "cost-first", "carbon-first"])
def test_every_policy_drives_the_placement_kind(policy: str) -> None:
    r = run(parse_scenario(PLACEMENT, "p.toml"), policy=policy)
    assert r.summary["policy"] == policy and r.summary["placement"]["started"] > 0


def test_wrong_policy_for_the_kind_is_refused() -> None:
    with pytest.raises(ScenarioError, match="cost-first"):
        market("fgd")
    with pytest.raises(ScenarioError, match="best-fit"):
        run(parse_scenario(PLACEMENT, "p.toml"), policy="cheapest")


TRACE = """
name = "fake trace"
kind = "placement"
sample_minutes = 1

[[fleet]]
name = "t"
source = "openb"
gpus = {gpus}

[workload]
source = "openb"
replay = "{replay}"
"""

NODES = [NodeSpec("a", 8000, 65536, 2, "T4"), NodeSpec("b", 16000, 65536, 0)]


def pods() -> list[TracePod]:
    def pod(i: int, gpus: int, milli: int, t0: int, t1: int) -> TracePod:
        req = Request(1000, 1024, gpus, milli if gpus else 0)
        return TracePod(f"p{i}", req, "LS", "Running", t0, t1, t0)

    return [
        pod(0, 1, FULL, 0, 600),
        pod(1, 1, 500, 10, 300),
        pod(2, 2, FULL, 20, 100),  # does not fit until p0 leaves at 600: gives up at 100
        pod(3, 0, 0, 30, 40),
        pod(4, 1, 500, 60, 900),
    ]


def fake(text: str) -> SimResult:
    return run(
        parse_scenario(text, "t.toml"),
        nodes_loader=lambda d: list(NODES),
        pods_loader=lambda d, name: pods(),
    )


def test_trace_replayed_as_recorded() -> None:
    r = fake(TRACE.format(gpus=0, replay="recorded"))
    p = r.summary["placement"]
    assert p["arrived"] == 5 and p["started"] == 4 and p["gave_up"] == 1
    assert p["finished"] == 4 and p["still_running"] == 0
    assert r.summary["simulated_hours"] == pytest.approx(900 / 3600)
    # replicated twice: twice the nodes and each pod twice; best-fit packs both p0 onto the
    # first T4 node and both half-GPU p1 onto one GPU of the copy, so neither p2 fits
    r2 = fake(TRACE.format(gpus=4, replay="recorded"))
    assert r2.summary["fleet"]["gpus"] == 4
    assert r2.summary["placement"]["arrived"] == 10
    assert r2.summary["placement"]["gave_up"] == 2


def test_trace_inflated_fgd_style() -> None:
    r = fake(TRACE.format(gpus=0, replay="inflate"))
    p = r.summary["placement"]
    assert p["arrived_gpu_demand_over_capacity"] >= 1.3
    assert p["finished"] == 0  # arrivals only
    assert p["arrived"] == p["started"] + p["gave_up"] and p["gave_up"] > 0
    assert 0 < p["gpu_allocation_at_end"] <= 1


def test_missing_trace_is_a_clear_error(tmp_path: Path) -> None:
    text = TRACE.format(gpus=0, replay="recorded").replace(
        'source = "openb"\ngpus', f'source = "openb"\ntrace_dir = "{tmp_path}"\ngpus'
    )
    with pytest.raises(ScenarioError, match="openb trace is not in"):
        run(parse_scenario(text, "t.toml"))


def test_event_queue_orders_by_time_then_schedule() -> None:
    q = EventQueue()
    a, b, c = Sample(), Sample(), Sample()
    q.push(5, a)
    q.push(1, b)
    q.push(5, c)
    assert [q.pop() is x for x in (b, a, c)] == [True, True, True]
    assert q.now_ms == 5
    with pytest.raises(ValueError, match="before the clock"):
        q.push(4, a)
