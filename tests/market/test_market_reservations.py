"""Reservations: choosing devices for a window, guarding them, notices, use by the owner,
expiry, and their refusals."""

from __future__ import annotations

import pytest

from crucible.core.market import CPU, EndReason, HostSpec, LeaseGranted, PreemptCause, Tier
from crucible.errors import ConflictError, InvalidRequestError

from market_testlib import (
    GRACE,
    HOUR,
    bid,
    gpu_host,
    granted,
    market,
    offer,
    refused,
    req,
    reserve_req,
    reserved,
    usd,
)


def test_a_reservation_takes_the_cheapest_reserved_price_and_costs_its_whole_window() -> None:
    m = market(
        (gpu_host("a", n=8), offer(2.0, reserved=1.6)),
        (gpu_host("b", n=8), offer(2.2, reserved=1.5)),
    )
    r = reserved(m.reserve(reserve_req("r1", "acme", 8, HOUR, 3 * HOUR), 0)).reservation
    assert [(b.host_id, b.devices, b.price_micros_per_device_hour) for b in r.blocks] == [
        ("b", tuple(range(8)), usd(1.5))
    ]
    assert r.rate_micros_per_hour == 8 * usd(1.5)
    assert r.cost_micros == 2 * 8 * usd(1.5)


def test_reserved_devices_take_no_new_lease_from_others_even_before_the_window() -> None:
    m = market((gpu_host("h", n=2), offer(2.0)))
    reserved(m.reserve(reserve_req("r1", "acme", 1, 10 * HOUR, 20 * HOUR), 0))
    granted(m.lease(req("x", lease_id="x1"), 1))
    assert refused(m.decide_lease(req("y"), 2)).code == "no_capacity"
    assert refused(m.decide_lease(bid("y", 100.0), 2)).code == "no_capacity"
    assert m.book("H100", 2).free_devices == 0


def test_the_owner_uses_its_reservation_first_and_only_inside_the_window() -> None:
    m = market((gpu_host("h", n=4), offer(2.0, reserved=1.5)))
    reserved(m.reserve(reserve_req("r1", "acme", 2, 1000, 1000 + HOUR), 0))
    before = granted(m.lease(req("acme", lease_id="early"), 1)).leases[0]
    assert before.tier is Tier.ON_DEMAND and before.devices == (2,)
    assert refused(m.decide_lease(req("acme", tier=Tier.RESERVED), 2)).code == "no_reservation"
    m.advance(1000)
    for i in range(2):
        lease = granted(m.lease(bid("acme", 0.1, lease_id=f"in{i}"), 1000)).leases[0]
        assert lease.tier is Tier.RESERVED and lease.reservation_id == "r1"
        assert lease.rate_micros_per_hour == 0  # paid through the reservation
        assert lease.ends_by_ms == 1000 + HOUR
    # the reservation is full; the next one goes to the market at the market's price
    spill = granted(m.lease(req("acme", lease_id="spill"), 1001)).leases[0]
    assert spill.tier is Tier.ON_DEMAND and spill.devices == (3,)
    r = refused(m.decide_lease(req("acme", tier=Tier.RESERVED), 1002))
    assert r.code == "no_reservation" and "no active H100 reservation" in r.message


def test_a_reservation_is_used_only_where_the_lease_may_run() -> None:
    """Price, region and reliability do not apply inside one's own reservation (it is paid
    for); a carbon cap and verified hosts, which say where the code may run, do."""
    m = market((gpu_host("h", n=2, carbon=50), offer(2.0, reserved=1.5)))
    reserved(m.reserve(reserve_req("r1", "acme", 1, 0, HOUR), 0))
    m.advance(0)
    for ask in ({"max_carbon_g_per_kwh": 10}, {"verified": True}):
        r = refused(m.decide_lease(req("acme", tier=Tier.RESERVED, **ask), 1))
        assert r.code == "no_reservation", ask
        decided = m.decide_lease(req("acme", **ask), 1)
        assert not isinstance(decided, LeaseGranted) or decided.leases[0].tier is not (
            Tier.RESERVED
        ), ask
    assert granted(m.lease(req("acme", tier=Tier.RESERVED, lease_id="in"), 1)).leases[0].tier is (
        Tier.RESERVED
    )


def test_window_end_expires_the_leases_inside_and_frees_the_devices() -> None:
    m = market((gpu_host("h", n=1), offer(2.0)))
    reserved(m.reserve(reserve_req("r1", "acme", 1, 0, HOUR), 0))
    granted(m.lease(req("acme", tier=Tier.RESERVED, lease_id="in"), 0))
    done = m.advance(HOUR + 5)
    assert done.ended == ("r1",)
    assert [(x.lease_id, x.end_ms, x.end_reason) for x in done.expired] == [
        ("in", HOUR, EndReason.EXPIRED)
    ]
    assert m.reservations() == []
    assert granted(m.lease(req("other", lease_id="o"), HOUR + 6)).leases[0].host_id == "h"


def test_interruptible_leases_under_a_reservation_get_notice_one_grace_before_start() -> None:
    m = market((gpu_host("h", n=2), offer(2.0, minimum=0.2, reserved=1.0)))
    granted(m.lease(bid("spot", 0.5, count=2, lease_id="s"), 0))
    start = 10 * HOUR
    g = reserved(m.reserve(reserve_req("r1", "acme", 2, start, start + 10 * HOUR), 1))
    assert g.preemptions == ()  # far from the window: not yet
    assert m.get_lease("s").running
    assert m.next_event_ms() == start - GRACE
    with pytest.raises(ValueError, match="advance"):
        m.decide_lease(req("x"), start)
    done = m.advance(start - GRACE)
    (p,) = done.preemptions
    assert p.lease.lease_id == "s" and p.cause is PreemptCause.RESERVATION
    assert p.by_id == "r1" and p.by_price == usd(1.0) > usd(0.5)
    assert (p.notice_ms, p.deadline_ms) == (start - GRACE, start)
    assert m.advance(start).started == ("r1",)
    lease = granted(m.lease(req("acme", count=2, lease_id="a"), start)).leases[0]
    assert lease.start_ms == start and lease.reservation_id == "r1"


def test_a_reservation_starting_now_preempts_at_once_with_the_full_grace() -> None:
    m = market((gpu_host("h", n=1), offer(2.0, minimum=0.2, reserved=1.0)))
    granted(m.lease(bid("spot", 0.5, lease_id="s"), 0))
    g = reserved(m.reserve(reserve_req("r1", "acme", 1, 100, 100 + HOUR), 100))
    (p,) = g.preemptions
    assert (p.notice_ms, p.deadline_ms) == (100, 100 + GRACE)
    # What the renter pays for starts when the device is free: neither side pays for the
    # grace. The window is as asked, and a lease in it is granted at once, to start then.
    r = g.reservation
    assert (r.start_ms, r.billed_from_ms, r.end_ms) == (100, 100 + GRACE, 100 + HOUR)
    assert r.cost_micros == 1_000_000 * (HOUR - GRACE) // HOUR
    lease = granted(m.lease(req("acme", lease_id="a"), 100)).leases[0]
    assert lease.reservation_id == "r1" and lease.start_ms == 100 + GRACE


def test_free_devices_are_reserved_before_outbid_ones_and_never_on_demand_or_higher_bids() -> None:
    m = market((gpu_host("h", n=4), offer(2.0, minimum=0.2, reserved=1.0)))
    granted(m.lease(req("od", lease_id="od"), 0))  # device 0
    granted(m.lease(bid("hi", 1.0, lease_id="hi"), 0))  # device 1: bid == reserved price
    granted(m.lease(bid("lo", 0.3, lease_id="lo"), 0))  # device 2
    r = reserved(m.reserve(reserve_req("r1", "acme", 1, 0, HOUR), 0)).reservation
    assert r.blocks[0].devices == (3,)  # the free one
    g = reserved(m.reserve(reserve_req("r2", "acme", 1, 0, HOUR), 0))
    assert g.reservation.blocks[0].devices == (2,)
    assert [p.lease.lease_id for p in g.preemptions] == ["lo"]
    r3 = refused(m.reserve(reserve_req("r3", "acme", 1, 0, HOUR), 0))
    assert r3.code == "no_capacity"
    assert m.get_lease("od").running and m.get_lease("hi").running


def test_windows_may_share_devices_when_they_do_not_overlap() -> None:
    m = market((gpu_host("h", n=1), offer(2.0)))
    reserved(m.reserve(reserve_req("r1", "a", 1, HOUR, 2 * HOUR), 0))
    assert refused(m.reserve(reserve_req("r2", "b", 1, HOUR + 1, 3 * HOUR), 0)).code == (
        "no_capacity"
    )
    reserved(m.reserve(reserve_req("r2", "b", 1, 2 * HOUR, 4 * HOUR), 0))
    reserved(m.reserve(reserve_req("r0", "c", 1, 0, HOUR), 0))
    m.advance(0)
    granted(m.lease(req("c", tier=Tier.RESERVED, lease_id="c"), 0))
    m.advance(HOUR)  # r0 ends, r1 starts on the same device
    granted(m.lease(req("a", tier=Tier.RESERVED, lease_id="a"), HOUR))
    assert m.audit() == []


def test_a_reserved_lease_ending_before_the_window_does_not_block_it() -> None:
    m = market((gpu_host("h", n=1), offer(2.0)))
    reserved(m.reserve(reserve_req("r1", "a", 1, 0, HOUR), 0))
    granted(m.lease(req("a", tier=Tier.RESERVED, lease_id="in"), 0))
    reserved(m.reserve(reserve_req("r2", "b", 1, HOUR, 2 * HOUR), 10))
    done = m.advance(HOUR)
    assert [x.lease_id for x in done.expired] == ["in"] and done.preemptions == ()
    assert done.started == ("r2",)


def test_multi_node_reservations_and_host_loss() -> None:
    m = market(*((gpu_host(f"h{i}", n=8), offer(2.0 + i)) for i in range(3)))
    r = reserved(m.reserve(reserve_req("r1", "acme", 8, 0, HOUR, nodes=2), 0)).reservation
    assert [b.host_id for b in r.blocks] == ["h0", "h1"]
    assert r.rate_micros_per_hour == 8 * (usd(1.6) + usd(2.4))
    g = granted(m.lease(req("acme", count=8, nodes=2, lease_id="job"), 0))
    assert {x.tier for x in g.leases} == {Tier.RESERVED}
    gone = m.set_online("h1", False, 10)
    assert gone.reservations == ("r1",) and [x.lease_id for x in gone.ended] == ["job.1"]


def test_reservation_refusals_and_validation() -> None:
    m = market((gpu_host("h", n=4, region="eu"), offer(2.0, reserved=1.5)))
    assert refused(m.reserve(reserve_req("r", "a", 8, 0, HOUR), 0)).code == "no_offer"
    assert refused(m.reserve(reserve_req("r", "a", 4, 0, HOUR, region="us"), 0)).code == (
        "filtered"
    )
    r = refused(m.reserve(reserve_req("r", "a", 4, 0, HOUR, max_price=usd(1)), 0))
    assert r.code == "price" and "$1.50/device-hour" in r.message
    m.add_host(HostSpec("c", "eu", cpu_cores=8))
    m.set_offer("c", CPU, offer(0.1))
    assert refused(m.reserve(reserve_req("r", "a", 2, 0, HOUR, model=CPU), 0)).code == (
        "not_reservable"
    )
    with pytest.raises(InvalidRequestError, match="in the past"):
        m.reserve(reserve_req("r", "a", 1, 0, HOUR), 5)
    with pytest.raises(InvalidRequestError, match="days ahead"):
        m.reserve(reserve_req("r", "a", 1, 400 * 24 * HOUR, 401 * 24 * HOUR), 5)
    with pytest.raises(InvalidRequestError, match="must end after"):
        reserve_req("r", "a", 1, HOUR, HOUR)
    # At least an hour, and no farther ahead than it lasts: a 4 ms window 29 days ahead held
    # the devices from everyone for 29 days at the price of 4 ms.
    with pytest.raises(InvalidRequestError, match="at least 1 h"):
        m.reserve(reserve_req("r", "a", 1, 10, 10 + HOUR - 1), 5)
    with pytest.raises(InvalidRequestError, match="as far ahead as it lasts"):
        m.reserve(reserve_req("r", "a", 1, 29 * 24 * HOUR, 29 * 24 * HOUR + HOUR), 5)
    reserved(m.reserve(reserve_req("r", "a", 1, 10, 10 + HOUR), 5))
    with pytest.raises(ConflictError):
        m.reserve(reserve_req("r", "a", 1, 10, 10 + HOUR), 5)


def test_draining_hosts_take_no_reservations_but_honour_existing_ones() -> None:
    m = market((gpu_host("h", n=2), offer(2.0)))
    reserved(m.reserve(reserve_req("r1", "a", 1, 0, HOUR), 0))
    m.set_draining("h", True)
    assert refused(m.reserve(reserve_req("r2", "b", 1, 0, HOUR), 0)).code == "no_offer"
    lease = granted(m.lease(req("a", tier=Tier.RESERVED, lease_id="in"), 0)).leases[0]
    assert lease.reservation_id == "r1"
