"""The one lease path of the scheduler and the simulator (core/leasing.py)."""

from __future__ import annotations

from crucible.core.leasing import NotLeased, choice_runs, lease_on_hosts
from crucible.core.market import (
    HostSpec,
    LeaseGranted,
    LeaseRequest,
    Market,
    MarketRules,
    Offer,
    Prefer,
    Tier,
)
from crucible.core.scheduling import FunctionDemand, GpuChoice, HostCapacity, Policy, plan
from crucible.server.services.market import LiveMarket, MarketPlacer, MarketTerms
from crucible.settings import load_settings

USD = 1_000_000


def _market(*hosts: tuple[str, str, int, int]) -> Market:
    """Hosts as (id, model, gpus, on-demand price)."""
    m = Market(MarketRules(grace_ms=0))
    for host_id, model, gpus, price in hosts:
        m.add_host(HostSpec(host_id, "eu", gpus=tuple((g, model) for g in range(gpus))))
        m.set_offer(host_id, model, Offer(price, price // 4, price))
    return m


def _cap(host_id: str, model: str, gpus: int, cpu: float = 16.0) -> HostCapacity:
    return HostCapacity(host_id, cpu, 65_536, tuple((g, model) for g in range(gpus)))


def _by_id(*hosts: HostCapacity) -> dict[str, HostCapacity]:
    return {h.id: h for h in hosts}


def test_choices_of_one_count_are_one_request_in_order() -> None:
    choices = (GpuChoice("H100", 1), GpuChoice("A100", 1), GpuChoice("L4", 2), GpuChoice("T4", 1))
    assert choice_runs(choices, Prefer.CHEAPEST) == [
        (("H100", "A100"), 1),
        (("L4",), 2),
        (("T4",), 1),
    ]
    speed = {"H100": 3, "A100": 2, "T4": 1}
    fast = (GpuChoice("T4", 1), GpuChoice("A100", 1), GpuChoice("H100", 1))
    assert choice_runs(fast, Prefer.FASTEST, speed) == [(("H100", "A100", "T4"), 1)]
    assert choice_runs(fast, Prefer.CHEAPEST, speed) == [(("T4", "A100", "H100"), 1)]


def test_a_grant_avoids_hosts_short_of_cpu_and_charges_the_host() -> None:
    m = _market(("ho-a", "H100", 1, 1 * USD), ("ho-b", "H100", 1, 2 * USD))
    hosts = _by_id(_cap("ho-a", "H100", 1, cpu=1.0), _cap("ho-b", "H100", 1))
    req = LeaseRequest(account="acct", models=("H100",), count=1, lease_id="ct-1")
    got = lease_on_hosts(m, req, 0, hosts=hosts, cpu=4.0, memory_mib=1024)
    assert isinstance(got, LeaseGranted)
    assert got.leases[0].host_id == "ho-b"  # the cheaper host lacks the cores
    b = hosts["ho-b"]
    assert b.used_cpu == 4.0 and b.used_memory_mib == 1024 and b.used_gpus == {0}
    assert hosts["ho-a"].used_cpu == 0.0
    assert [x.lease_id for x in m.running_leases()] == ["ct-1"]


def test_a_refusal_says_when_cpu_not_gpus_is_short() -> None:
    m = _market(("ho-a", "H100", 1, 1 * USD))
    hosts = _by_id(_cap("ho-a", "H100", 1, cpu=1.0))
    req = LeaseRequest(account="acct", models=("H100",), count=1, lease_id="ct-1")
    got = lease_on_hosts(m, req, 0, hosts=hosts, cpu=4.0, memory_mib=1024)
    assert isinstance(got, NotLeased) and got.code == "no_capacity"
    assert "lack the CPU or memory" in got.message and "cpu=4" in got.message
    assert m.running_leases() == []


def test_a_pods_disk_goes_only_to_a_host_with_that_much_free_disk() -> None:
    m = _market(("ho-a", "H100", 1, 1 * USD), ("ho-b", "H100", 1, 2 * USD))
    small, big = _cap("ho-a", "H100", 1), _cap("ho-b", "H100", 1)
    small.disk_mib, big.disk_mib = 100 * 1024, 500 * 1024
    req = LeaseRequest(account="acct", models=("H100",), count=1, lease_id="ct-1")
    hosts = _by_id(small, big)
    got = lease_on_hosts(m, req, 0, hosts=hosts, cpu=1.0, memory_mib=1, disk_mib=200 * 1024)
    assert isinstance(got, LeaseGranted) and got.leases[0].host_id == "ho-b"
    # No host has the disk: said so, and nothing is leased.
    req2 = LeaseRequest(account="acct", models=("H100",), count=1, lease_id="ct-2")
    got = lease_on_hosts(m, req2, 0, hosts=hosts, cpu=1.0, memory_mib=1, disk_mib=600 * 1024)
    assert isinstance(got, NotLeased) and "free disk asked" in got.message
    assert "disk=600 GiB" in got.message
    assert [x.lease_id for x in m.running_leases()] == ["ct-1"]


def test_a_grant_on_a_host_not_ready_is_not_applied() -> None:
    m = _market(("ho-a", "H100", 2, 1 * USD), ("ho-b", "H100", 2, 2 * USD))
    req = LeaseRequest(account="acct", models=("H100",), count=1, nodes=2, lease_id="ct-1")
    got = lease_on_hosts(m, req, 0, hosts=_by_id(_cap("ho-a", "H100", 2)), cpu=1.0, memory_mib=1)
    assert isinstance(got, NotLeased)
    assert "ho-b" in got.message and "not ready" in got.message
    assert m.running_leases() == []  # all or nothing: the gang's first member was not kept


def test_the_scheduler_takes_a_free_fallback_model_before_preempting() -> None:
    """A function asking for H100 or A100 (one GPU): with the only H100 under a low bid and
    an A100 free, it gets the A100 and preempts no one (the market's rule for one request's
    models). Asked one model at a time, the placer preempted the H100's bid first."""
    live = LiveMarket(load_settings({}))
    m = live.market
    for host_id, model in (("ho-h", "H100"), ("ho-a", "A100")):
        m.add_host(HostSpec(host_id, "eu", gpus=((0, model),)))
        m.set_offer(host_id, model, Offer(2 * USD, USD // 10, 2 * USD))
    low = LeaseRequest(
        account="other", models=("H100",), count=1, tier=Tier.INTERRUPTIBLE, bid=USD // 5
    )
    assert isinstance(m.lease(low, 0), LeaseGranted)
    fn = FunctionDemand(
        id="fn-1",
        cpu=1.0,
        memory_mib=1024,
        gpus=(GpuChoice("H100", 1), GpuChoice("A100", 1)),
        queued=1,
        running=0,
        oldest_queued_ms=0,
        oldest_running_started_ms=None,
        avg_exec_ms=None,
        containers=(),
        max_containers=1,
        scaledown_window_ms=60_000,
        account_id="me",
    )
    hosts = [_cap("ho-h", "H100", 1), _cap("ho-a", "A100", 1)]
    hosts[0].used_gpus.add(0)
    placer = MarketPlacer(live, {"fn-1": "me"}, {"fn-1": MarketTerms()}, 1000)
    started = plan(1000, [fn], hosts, Policy(), gpu_placer=placer).start
    assert [(s.host_id, s.gpu_model) for s in started] == [("ho-a", "A100")]
    assert placer.preemptions == []
    assert {x.account for x in m.running_leases()} == {"other", "me"}


def test_the_market_asks_avoid_per_host_and_never_lists_it() -> None:
    """``decide_lease`` only asks ``host in avoid``: the scheduler's view of hosts short of
    room answers per host instead of listing a fleet of 100,000 GPUs for every container."""

    class Asked:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def __contains__(self, host_id: object) -> bool:
            self.asked.append(str(host_id))
            return host_id == "ho-a"

        def __iter__(self) -> object:
            raise AssertionError("avoid was listed")

    m = _market(("ho-a", "H100", 1, 1 * USD), ("ho-b", "H100", 1, 2 * USD))
    avoid = Asked()
    req = LeaseRequest(account="acct", models=("H100",), count=1, lease_id="ct-1")
    got = m.decide_lease(req, 0, avoid=avoid)
    assert isinstance(got, LeaseGranted) and got.leases[0].host_id == "ho-b"
    assert "ho-a" in avoid.asked
