"""Lease placement, rule by rule: ranking, tiers and prices, preemption, draining, gangs,
CPU-only capacity, and decide/apply."""

from __future__ import annotations

import pytest

from crucible.core.market import (
    CPU,
    EndReason,
    HostSpec,
    Market,
    MarketRules,
    Offer,
    PreemptCause,
    Prefer,
    Tier,
    effective_price,
)
from crucible.errors import ConflictError, InvalidRequestError, NotFoundError

from market_testlib import GRACE, PPM, bid, gpu_host, granted, market, offer, refused, req, usd

# -- ranking ---------------------------------------------------------------------------------


def test_effective_price_formula() -> None:
    assert effective_price(usd(2.00), 950_000) == 2_105_264  # ceil(2e6 / 0.95)
    assert effective_price(usd(2.05), 990_000) == 2_070_708
    assert effective_price(usd(2.00), PPM) == usd(2.00)
    assert effective_price(usd(1), 0) == usd(1) * PPM  # reliability 0 ranks last, no crash


def test_cheapest_ranks_by_reliability_adjusted_price_and_pays_the_ask() -> None:
    m = market(
        (gpu_host("cheap-flaky", reliability=0.95), offer(2.00)),
        (gpu_host("dear-solid", reliability=0.99), offer(2.05)),
    )
    lease = granted(m.lease(req(lease_id="l1"), 0)).leases[0]
    assert lease.host_id == "dear-solid"
    assert lease.price_micros_per_device_hour == usd(2.05)  # the ask, not the effective price
    assert lease.tier is Tier.ON_DEMAND


def test_carbon_breaks_price_ties_undeclared_last() -> None:
    m = market(
        (gpu_host("h-dirty", n=1, carbon=500), offer(2)),
        (gpu_host("h-clean", n=1, carbon=20), offer(2)),
        (gpu_host("h-undeclared", n=1), offer(2)),
    )
    hosts = [granted(m.lease(req(lease_id=f"l{i}"), 0)).leases[0].host_id for i in range(3)]
    assert hosts == ["h-clean", "h-dirty", "h-undeclared"]


def test_locality_then_packing_then_host_id_break_remaining_ties() -> None:
    m = market(
        (gpu_host("h-1", n=2, region="us"), offer(2)),
        (gpu_host("h-2", n=2, region="eu"), offer(2)),
        (gpu_host("h-3", n=2, region="eu"), offer(2)),
        (gpu_host("h-4", n=2, region="us"), offer(2)),
    )
    assert granted(m.lease(req("q", region="eu", lease_id="q1"), 0)).leases[0].host_id == "h-2"
    assert granted(m.lease(req("q", lease_id="q2"), 0)).leases[0].host_id == "h-2"  # own host
    assert granted(m.lease(req("q", lease_id="q3"), 0)).leases[0].host_id == "h-3"  # own region
    # packing (the placement engine's best-fit): the host with the fewest free devices left
    assert granted(m.lease(req("z", lease_id="z1"), 0)).leases[0].host_id == "h-3"
    assert granted(m.lease(req("y", lease_id="y1"), 0)).leases[0].host_id == "h-1"  # id order
    # locality never beats price
    m.set_offer("h-1", "H100", offer(2.01))
    assert granted(m.lease(req("y", lease_id="y2"), 0)).leases[0].host_id == "h-4"


def test_avoided_hosts_get_no_node_free_or_by_preemption() -> None:
    """decide_lease(avoid=...): the scheduler's hosts that lack a container's CPU or memory."""
    m = market((gpu_host("h-1", n=1), offer(1)), (gpu_host("h-2", n=1), offer(2)))
    d = m.decide_lease(req(lease_id="x"), 0, avoid=["h-1"])
    assert granted(d).leases[0].host_id == "h-2"  # the dearer host, not the avoided one
    granted(m.lease(bid("low", 1.0, lease_id="b1"), 0))  # the cheaper minimum: h-1
    granted(m.lease(bid("low", 1.5, lease_id="b2"), 0))  # h-2
    # A higher bid would preempt the lowest (on h-1), but h-1 is avoided: it takes b2's.
    d = m.decide_lease(bid("high", 3.0, lease_id="hi"), 0, avoid={"h-1"})
    assert [p.lease.lease_id for p in granted(d).preemptions] == ["b2"]
    refused(m.decide_lease(bid("high", 3.0, lease_id="hi"), 0, avoid={"h-1", "h-2"}))


def test_greenest_puts_carbon_first_within_max_price() -> None:
    m = market(
        (gpu_host("coal", carbon=900), offer(1.00)),
        (gpu_host("hydro", carbon=10, energy="hydro"), offer(1.80)),
        (gpu_host("solar", carbon=30, energy="solar"), offer(1.20)),
    )
    green = req(prefer=Prefer.GREENEST, lease_id="g1")
    assert granted(m.decide_lease(green, 0)).leases[0].host_id == "hydro"
    capped = req(prefer=Prefer.GREENEST, max_price=usd(1.50), lease_id="g2")
    assert granted(m.decide_lease(capped, 0)).leases[0].host_id == "solar"
    assert granted(m.decide_lease(req(lease_id="c"), 0)).leases[0].host_id == "coal"


def test_max_carbon_refuses_hosts_above_the_cap_and_undeclared_ones() -> None:
    m = market(
        (gpu_host("coal", carbon=900), offer(1.00)),
        (gpu_host("unknown"), offer(0.50)),
        (gpu_host("solar", carbon=30, energy="solar"), offer(1.20)),
        (gpu_host("hydro", carbon=10, energy="hydro"), offer(1.80)),
    )
    # cheapest under the cap: solar (coal is above it, the undeclared host cannot show it is
    # under it, hydro is dearer)
    capped = req(max_carbon_g_per_kwh=100, lease_id="c1")
    assert granted(m.decide_lease(capped, 0)).leases[0].host_id == "solar"
    # greenest within a price cap and a carbon cap
    both = req(prefer=Prefer.GREENEST, max_price=usd(1.50), max_carbon_g_per_kwh=100)
    assert granted(m.decide_lease(both, 0)).leases[0].host_id == "solar"
    # interruptible bids obey the cap too
    assert (
        granted(m.decide_lease(bid("b", 0.95, max_carbon_g_per_kwh=50), 0)).leases[0].host_id
        == "hydro"
    )
    # nothing qualifies: a clear refusal naming the cap and the greenest host there is
    r = refused(m.decide_lease(req(max_carbon_g_per_kwh=5, lease_id="c2"), 0))
    assert r.code.value == "filtered"
    assert "max_carbon_g_per_kwh=5" in r.message and "greenest declares 10 gCO2/kWh" in r.message
    assert "raise max_carbon_g_per_kwh" in r.message
    with pytest.raises(InvalidRequestError, match="max_carbon_g_per_kwh"):
        req(max_carbon_g_per_kwh=-1)


def test_fastest_tries_the_fastest_model_first_and_the_list_order_otherwise() -> None:
    rules = MarketRules(grace_ms=GRACE, model_speed={"H100": 3, "A100": 2})
    m = market(
        (gpu_host("a", "A100"), offer(1.0)),
        (gpu_host("h", "H100"), offer(2.0)),
        rules=rules,
    )
    fallback = req(models=("A100", "H100"), lease_id="f")
    assert granted(m.decide_lease(fallback, 0)).leases[0].device_type == "A100"
    fastest = req(models=("A100", "H100"), prefer=Prefer.FASTEST, lease_id="f")
    assert granted(m.decide_lease(fastest, 0)).leases[0].device_type == "H100"
    bounded = req(models=("A100", "H100"), prefer=Prefer.FASTEST, max_price=usd(1.5))
    assert granted(m.decide_lease(bounded, 0)).leases[0].device_type == "A100"


def test_fallback_order_and_max_price_bound_the_choice() -> None:
    m = market((gpu_host("h", "H100", n=1), offer(3.0)), (gpu_host("a", "A100"), offer(1.2)))
    lease = granted(m.lease(req(models=("H100", "A100"), lease_id="l1"), 0)).leases[0]
    assert lease.device_type == "H100"
    lease = granted(m.lease(req(models=("H100", "A100"), lease_id="l2"), 0)).leases[0]
    assert lease.device_type == "A100"  # H100 is full
    capped = req(models=("H100", "A100"), max_price=usd(2), lease_id="l3")
    m.release("l1", 1)
    assert granted(m.lease(capped, 1)).leases[0].device_type == "A100"


def test_region_and_min_reliability_filter() -> None:
    m = market(
        (gpu_host("us-1", region="us", reliability=0.999), offer(2)),
        (gpu_host("eu-1", region="eu", reliability=0.9), offer(1)),
    )
    assert granted(m.decide_lease(req(region="us"), 0)).leases[0].host_id == "us-1"
    strict = req(min_reliability_ppm=990_000)
    assert granted(m.decide_lease(strict, 0)).leases[0].host_id == "us-1"
    r = refused(m.decide_lease(req(region="eu", min_reliability_ppm=990_000), 0))
    assert r.code == "filtered"
    assert "region=eu" in r.message and "min_reliability=0.99" in r.message


# -- tiers and prices ------------------------------------------------------------------------


def test_interruptible_pays_its_bid_or_the_hosts_minimum() -> None:
    m = market((gpu_host("h", n=4), offer(2.0, minimum=0.8)))
    assert granted(m.lease(bid("a", 1.1, lease_id="b1"), 0)).leases[0].bid == usd(1.1)
    assert granted(m.lease(bid("b", None, lease_id="b2"), 0)).leases[0].bid == usd(0.8)
    r = refused(m.decide_lease(bid("c", 0.5), 0))
    assert r.code == "bid_too_low"
    assert "$0.50/device-hour" in r.message and "$0.80/device-hour" in r.message


def test_explicit_bid_ranks_by_reliability_since_it_pays_the_same_everywhere() -> None:
    m = market(
        (gpu_host("cheap-min", reliability=0.9), offer(2.0, minimum=0.2)),
        (gpu_host("solid", reliability=0.99), offer(2.0, minimum=0.9)),
    )
    assert granted(m.decide_lease(bid("a", 1.0), 0)).leases[0].host_id == "solid"
    # with the default bid, the renter pays each host's minimum: the cheap one wins
    assert granted(m.decide_lease(bid("a", None), 0)).leases[0].host_id == "cheap-min"


def test_a_running_lease_keeps_its_price_when_the_offer_changes() -> None:
    m = market((gpu_host("h", n=2), offer(2.0)))
    granted(m.lease(req(lease_id="l1"), 0))
    m.set_offer("h", "H100", offer(3.0))
    assert m.get_lease("l1").price_micros_per_device_hour == usd(2.0)
    assert granted(m.lease(req(lease_id="l2"), 1)).leases[0].price_micros_per_device_hour == usd(3)


def test_max_price_refusal_names_the_cheapest_ask() -> None:
    m = market((gpu_host("h"), offer(2.5)))
    r = refused(m.decide_lease(req(max_price=usd(2)), 0))
    assert r.code == "price"
    assert "$2.50/device-hour" in r.message and "$2.00/device-hour" in r.message


# -- preemption ------------------------------------------------------------------------------


def _full_of_bids(*bids: float) -> Market:
    """One host per bid, one device each, each leased at that bid."""
    hosts = [(gpu_host(f"h{i}", n=1), offer(3.0, minimum=0.1)) for i in range(len(bids))]
    m = market(*hosts)
    for i, price in enumerate(bids):
        lease = granted(m.lease(bid(f"r{i}", price, lease_id=f"b{i}"), i)).leases[0]
        assert lease.host_id == f"h{i}"
    return m


def test_a_higher_bid_preempts_the_lowest_bid_strictly_below_it() -> None:
    m = _full_of_bids(1.0, 0.5, 0.7)
    g = granted(m.lease(bid("new", 0.9, lease_id="n"), 100))
    (p,) = g.preemptions
    assert p.lease.lease_id == "b1"  # the lowest running bid
    assert p.cause is PreemptCause.OUTBID and p.by_price == usd(0.9) and p.by_id == "n"
    assert (p.notice_ms, p.deadline_ms) == (100, 100 + GRACE)
    assert p.lease.end_ms == 100 and p.lease.end_reason is EndReason.PREEMPTED
    new = g.leases[0]
    assert new.host_id == "h1" and new.start_ms == 100 + GRACE and new.granted_ms == 100


def test_equal_and_higher_bids_are_never_preempted() -> None:
    m = _full_of_bids(0.5, 0.5)
    r = refused(m.decide_lease(bid("new", 0.5), 10))
    assert r.code == "no_capacity" and r.min_winning_bid is None
    assert "`crucible market quote` says what bid would win" in r.message
    q = m.quote(bid("new", 0.5), 10)
    assert q.refusal is not None and q.refusal.min_winning_bid == usd(0.5) + 1
    assert "$0.500001/device-hour would win" in q.refusal.message
    assert refused(m.decide_lease(bid("new", 0.4), 10)).code == "no_capacity"


def test_on_demand_preempts_bids_below_the_ask_only() -> None:
    m = market((gpu_host("h", n=2), offer(2.0, minimum=0.5)))
    granted(m.lease(bid("a", 2.5, lease_id="high"), 0))  # above the ask: safe from on-demand
    granted(m.lease(bid("b", 0.6, lease_id="low"), 0))
    g = granted(m.lease(req("c", lease_id="od"), 5))
    assert [p.lease.lease_id for p in g.preemptions] == ["low"]
    assert g.preemptions[0].cause is PreemptCause.ON_DEMAND
    r = refused(m.decide_lease(req("d"), 6))
    assert r.code == "no_capacity" and "on-demand" in r.message
    # On-demand pays the ask and outbids nothing: a higher max_price cannot help where none
    # was set (it was advised all the same).
    assert "max_price" not in r.message
    r = refused(m.decide_lease(req("d", max_price=1_000_000_000), 6))
    assert r.code == "no_capacity" and "raise max_price" in r.message


def test_on_demand_and_reserved_leases_are_never_preempted() -> None:
    m = market((gpu_host("h", n=1), offer(1.0, minimum=0.1)))
    granted(m.lease(req("a", lease_id="od"), 0))
    assert refused(m.decide_lease(bid("b", 100.0), 1)).code == "no_capacity"
    assert refused(m.decide_lease(req("b"), 1)).code == "no_capacity"


def test_free_capacity_anywhere_on_the_list_comes_before_preempting() -> None:
    m = market(
        (gpu_host("h", "H100", n=1), offer(2.0, minimum=0.1)),
        (gpu_host("a", "A100", n=1), offer(1.0)),
    )
    granted(m.lease(bid("a", 0.2, lease_id="cheap"), 0))
    g = granted(m.lease(req("b", models=("H100", "A100"), lease_id="od"), 1))
    assert g.preemptions == () and g.leases[0].device_type == "A100"
    g = granted(m.lease(req("c", models=("H100", "A100"), lease_id="od2"), 2))
    assert [p.lease.lease_id for p in g.preemptions] == ["cheap"]


def test_preemption_frees_whole_leases_lowest_first_on_the_chosen_host() -> None:
    # h1: two leases of 2 at 0.3 and 0.6; h2: one lease of 4 at 0.5.
    m = market((gpu_host("h1", n=4), offer(3, minimum=0.1)), (gpu_host("h2", n=4), offer(3, 0.1)))
    granted(m.lease(bid("a", 0.3, count=2, lease_id="a"), 0))
    granted(m.lease(bid("b", 0.6, count=2, lease_id="b"), 1))
    granted(m.lease(bid("c", 0.5, count=4, lease_id="c"), 2))
    assert {m.get_lease(x).host_id for x in "ab"} == {"h1"}
    # 4 devices: on h1 that needs bids up to 0.6, on h2 up to 0.5: h2 wins.
    g = granted(m.decide_lease(bid("n", 0.9, count=4, lease_id="n"), 3))
    assert [p.lease.lease_id for p in g.preemptions] == ["c"]
    # 2 devices: preempting "a" (0.3) on h1 suffices.
    g = granted(m.decide_lease(bid("n", 0.9, count=2, lease_id="n"), 3))
    assert [p.lease.lease_id for p in g.preemptions] == ["a"]


def test_a_default_bid_preempts_only_bids_below_the_hosts_current_minimum() -> None:
    m = market((gpu_host("h", n=2), offer(3, minimum=0.5)))
    granted(m.lease(bid("a", None, lease_id="at-min"), 0))
    granted(m.lease(bid("b", None, lease_id="also-at-min"), 0))
    assert refused(m.decide_lease(bid("c", None), 1)).code == "no_capacity"
    m.set_offer("h", "H100", offer(3, minimum=0.6))  # the host raises its minimum
    g = granted(m.decide_lease(bid("c", None, lease_id="c"), 2))
    assert [p.lease.lease_id for p in g.preemptions] == ["also-at-min"]  # both at 0.5: newest
    assert g.leases[0].bid == usd(0.6)
    m.set_offer("h", "H100", offer(3, minimum=0.5))  # and lowers it again
    assert refused(m.decide_lease(bid("c", None), 3)).code == "no_capacity"
    assert m.audit() == []


def test_ties_in_bid_preempt_the_most_recently_started_first() -> None:
    m = market((gpu_host("h", n=2), offer(3, minimum=0.1)))
    granted(m.lease(bid("a", 0.5, lease_id="old"), 0))
    granted(m.lease(bid("b", 0.5, lease_id="new"), 10))
    g = granted(m.decide_lease(bid("c", 0.6), 20))
    assert [p.lease.lease_id for p in g.preemptions] == ["new"]


def test_devices_freed_by_a_preemption_start_after_its_grace() -> None:
    m = market((gpu_host("h", n=1), offer(3, minimum=0.1)))
    granted(m.lease(bid("a", 0.5, lease_id="a"), 0))
    g = granted(m.lease(bid("b", 0.6, lease_id="b"), 100))
    assert g.leases[0].start_ms == 100 + GRACE
    # b is released while the device is still clearing: it ends with zero length, and the
    # next lease still waits for the SIGKILL deadline.
    ended = m.release("b", 200)
    assert ended.end_ms == ended.start_ms == 100 + GRACE
    nxt = granted(m.lease(bid("c", 0.2, lease_id="c"), 300)).leases[0]
    assert nxt.start_ms == 100 + GRACE


# -- hosts -----------------------------------------------------------------------------------


def test_draining_hosts_take_no_new_leases_but_keep_running_ones() -> None:
    m = market((gpu_host("h", n=2), offer(1)))
    granted(m.lease(req(lease_id="l1"), 0))
    m.set_draining("h", True)
    assert refused(m.decide_lease(req(), 1)).code == "no_offer"
    assert m.get_lease("l1").running
    m.set_draining("h", False)
    granted(m.lease(req(lease_id="l2"), 2))


def test_host_lost_ends_its_leases_and_unlists_it() -> None:
    m = market((gpu_host("h", n=2), offer(1)), (gpu_host("g", n=2), offer(2)))
    granted(m.lease(req(lease_id="l1"), 0))
    gone = m.set_online("h", False, 50)
    assert [(x.lease_id, x.end_ms, x.end_reason) for x in gone.ended] == [
        ("l1", 50, EndReason.HOST_LOST)
    ]
    assert granted(m.lease(req(lease_id="l2"), 60)).leases[0].host_id == "g"
    m.set_online("h", True, 70)
    assert granted(m.lease(req(lease_id="l3"), 80)).leases[0].host_id == "h"


def test_out_of_credit_ends_every_lease_of_the_account() -> None:
    m = market((gpu_host("h", n=4), offer(1)))
    for i in range(3):
        granted(m.lease(req("poor" if i < 2 else "rich", lease_id=f"l{i}"), 0))
    ended = m.end_account("poor", 10)
    assert [(x.lease_id, x.end_reason) for x in ended] == [
        ("l0", EndReason.OUT_OF_CREDIT),
        ("l1", EndReason.OUT_OF_CREDIT),
    ]
    assert [x.lease_id for x in m.running_leases()] == ["l2"]


def test_withdrawn_offer_and_unknown_hosts() -> None:
    m = market((gpu_host("h"), offer(1)))
    m.set_offer("h", "H100", None)
    assert refused(m.decide_lease(req(), 0)).code == "no_offer"
    with pytest.raises(NotFoundError):
        m.set_offer("nope", "H100", offer(1))
    with pytest.raises(NotFoundError):
        m.set_offer("h", "A100", offer(1))
    with pytest.raises(ConflictError):
        m.add_host(gpu_host("h"))
    with pytest.raises(InvalidRequestError, match="memory is priced separately"):
        m.set_offer("h", "H100", Offer(1, 1, 1, memory_on_demand=5))


def test_update_host_reranks_it() -> None:
    m = market((gpu_host("a"), offer(2)), (gpu_host("b"), offer(2)))
    assert granted(m.decide_lease(req(), 0)).leases[0].host_id == "a"
    m.update_host(gpu_host("a", reliability=0.5))
    assert granted(m.decide_lease(req(), 0)).leases[0].host_id == "b"
    with pytest.raises(ConflictError, match="devices cannot change"):
        m.update_host(gpu_host("a", n=4))
    assert m.audit() == []


# -- gangs, CPU-only, refusals ---------------------------------------------------------------


def test_multi_node_requests_take_distinct_hosts_or_nothing() -> None:
    m = market(*((gpu_host(f"h{i}", n=8), offer(2 + i / 10)) for i in range(3)))
    g = granted(m.lease(req(count=8, nodes=3, lease_id="job"), 0))
    assert [x.lease_id for x in g.leases] == ["job.0", "job.1", "job.2"]
    assert sorted(x.host_id for x in g.leases) == ["h0", "h1", "h2"]
    m.release("job.1", 5)
    r = refused(m.decide_lease(req(count=8, nodes=2), 6))
    assert r.code == "no_capacity"
    r = refused(m.decide_lease(req(count=8, nodes=4), 6))
    assert r.code == "too_large" and "4 nodes need as many distinct hosts" in r.message
    r = refused(m.decide_lease(req(count=9), 6))
    assert r.code == "too_large" and "the largest has 8" in r.message


def test_cpu_only_capacity_is_sold_per_core_with_memory() -> None:
    m = market()
    m.add_host(HostSpec("c1", "eu", cpu_cores=16, memory_gib=64))
    m.set_offer(
        "c1",
        CPU,
        Offer(usd(0.05), usd(0.02), usd(0.04), memory_on_demand=usd(0.01), memory_interruptible=5),
    )
    g = granted(m.lease(req(models=CPU, count=4, memory_gib=32, lease_id="c"), 0))
    lease = g.leases[0]
    assert lease.devices == (0, 1, 2, 3) and lease.memory_gib == 32
    assert lease.rate_micros_per_hour == 4 * usd(0.05) + 32 * usd(0.01)
    # memory, not cores, is what runs out
    r = refused(m.decide_lease(req(models=CPU, count=1, memory_gib=40), 1))
    assert r.code == "no_capacity"
    # an interruptible CPU lease can be preempted to free memory
    m.release("c", 2)
    granted(m.lease(bid("x", 0.02, models=(CPU,), count=1, memory_gib=60, lease_id="x"), 3))
    g = granted(m.lease(req("y", models=CPU, count=1, memory_gib=10, lease_id="y"), 4))
    assert [p.lease.lease_id for p in g.preemptions] == ["x"]


def test_request_validation_raises_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="count must be at least 1"):
        req(count=0)
    with pytest.raises(InvalidRequestError, match="a bid is for tier=interruptible"):
        req(bid=5)
    with pytest.raises(InvalidRequestError, match="above max_price"):
        bid("a", 2.0, max_price=usd(1))
    with pytest.raises(InvalidRequestError, match="cannot be mixed"):
        req(models=("H100", CPU))
    with pytest.raises(InvalidRequestError, match="appears twice"):
        req(models=("H100", "H100"))
    with pytest.raises(InvalidRequestError, match="memory_gib is for CPU-only"):
        req(memory_gib=4)


def test_no_offer_refusal() -> None:
    m = market((gpu_host("h", "A100"), offer(1)))
    r = refused(m.decide_lease(req(models=("H100", "B200")), 0))
    assert r.code == "no_offer" and "H100 or B200" in r.message


# -- decide / apply --------------------------------------------------------------------------


def test_quote_is_the_lease_decision_not_applied() -> None:
    m = market((gpu_host("h", n=2), offer(2, minimum=0.5)))
    granted(m.lease(bid("a", 0.6, count=2, lease_id="a"), 0))
    q = m.quote(req("b", count=2), 1)
    assert q.available and q.hosts == ("h",) and q.preempts == 1
    assert q.price_micros_per_device_hour == usd(2) and q.rate_micros_per_hour == usd(4)
    assert m.get_lease("a").running  # nothing happened
    q = m.quote(bid("b", 0.6, count=2), 1)
    assert not q.available and q.refusal is not None
    assert q.refusal.min_winning_bid == usd(0.6) + 1


def test_apply_refuses_a_stale_decision() -> None:
    m = market((gpu_host("h", n=2), offer(2)))
    d1 = granted(m.decide_lease(req(lease_id="x"), 0))
    d2 = granted(m.decide_lease(req(lease_id="y"), 0))
    m.apply(d1)
    with pytest.raises(ConflictError, match="decide again"):
        m.apply(d2)
    with pytest.raises(ConflictError, match="already exists"):
        m.decide_lease(req(lease_id="x"), 1)


def test_time_never_goes_backwards() -> None:
    m = market((gpu_host("h", n=2), offer(2)))
    granted(m.lease(req(lease_id="x"), 100))
    with pytest.raises(ValueError, match="backwards"):
        m.decide_lease(req(), 99)
    with pytest.raises(ValueError, match="backwards"):
        m.release("x", 50)
    with pytest.raises(NotFoundError):
        m.release("nope", 200)
