"""Tenancy in the market core: a host that does not isolate fully leases only to its owner,
and renters asking for verified hosts get only verified ones (leases, preemption,
reservations, quotes), with refusals that say which rule bound."""

from __future__ import annotations

import dataclasses

from crucible.core.market import HostSpec, RefusalCode, Tier

from market_testlib import (
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
)


def owned(spec: HostSpec, owner: str, *, isolated: bool, verified: bool = False) -> HostSpec:
    return dataclasses.replace(spec, owner=owner, isolated=isolated, verified=verified)


def test_a_host_without_full_isolation_leases_only_to_its_owner() -> None:
    m = market((owned(gpu_host("proc-a", n=2), "acct-a", isolated=False), offer(2)))
    r = refused(m.lease(req("acct-b", lease_id="b1"), 0))
    assert r.code is RefusalCode.NOT_ISOLATED
    assert "no fully isolated host has 1 H100" in r.message
    assert "only their owner's code" in r.message
    lease = granted(m.lease(req("acct-a", lease_id="a1"), 0)).leases[0]
    assert lease.host_id == "proc-a"


def test_strangers_go_to_the_isolated_host_even_when_the_open_one_is_cheaper() -> None:
    m = market(
        (owned(gpu_host("cheap-proc", n=1), "acct-a", isolated=False), offer(1)),
        (owned(gpu_host("dear-sandbox", n=1), "acct-c", isolated=True), offer(3)),
    )
    assert granted(m.lease(req("acct-b", lease_id="b1"), 0)).leases[0].host_id == "dear-sandbox"
    # The isolated host is now full; the process host stays closed to the stranger.
    r = refused(m.lease(req("acct-b", lease_id="b2"), 0))
    assert r.code is RefusalCode.NO_CAPACITY
    assert granted(m.lease(req("acct-a", lease_id="a1"), 0)).leases[0].host_id == "cheap-proc"


def test_a_stranger_never_preempts_on_a_host_it_may_not_use() -> None:
    m = market((owned(gpu_host("proc-a", n=1), "acct-a", isolated=False), offer(2, minimum=0.5)))
    granted(m.lease(bid("acct-a", 0.5, lease_id="a-low"), 0))
    r = refused(m.lease(req("acct-b", lease_id="b1"), 0))  # on-demand would preempt a $0.50 bid
    assert r.code is RefusalCode.NOT_ISOLATED
    assert [lease.lease_id for lease in m.running_leases()] == ["a-low"]


def test_verified_requests_get_verified_hosts_only() -> None:
    m = market(
        (owned(gpu_host("plain", n=1), "x", isolated=True), offer(1)),
        (owned(gpu_host("checked", n=1), "y", isolated=True, verified=True), offer(2)),
    )
    lease = granted(m.lease(req("acct-b", lease_id="v1", verified=True), 0)).leases[0]
    assert lease.host_id == "checked"
    r = refused(m.lease(req("acct-b", lease_id="v2", verified=True), 0))
    assert r.code is RefusalCode.NO_CAPACITY  # the one verified host is taken
    m2 = market((owned(gpu_host("plain", n=1), "x", isolated=True), offer(1)))
    r = refused(m2.lease(req("acct-b", lease_id="v3", verified=True), 0))
    assert r.code is RefusalCode.UNVERIFIED and "verified" in r.message


def test_quotes_and_reservations_follow_the_same_rule() -> None:
    m = market((owned(gpu_host("proc-a", n=2), "acct-a", isolated=False), offer(2)))
    q = m.quote(req("acct-b"), 0)
    assert not q.available and q.refusal is not None
    assert q.refusal.code is RefusalCode.NOT_ISOLATED
    assert m.quote(req("acct-a"), 0).available
    r = refused(m.decide_reservation(reserve_req("r-b", "acct-b", 1, HOUR, 2 * HOUR), 0))
    assert r.code is RefusalCode.NOT_ISOLATED
    assert reserved(m.decide_reservation(reserve_req("r-a", "acct-a", 1, HOUR, 2 * HOUR), 0))


def test_interruptible_winning_bid_ignores_closed_hosts() -> None:
    m = market((owned(gpu_host("proc-a", n=1), "acct-a", isolated=False), offer(2, minimum=0.5)))
    q = m.quote(req("acct-b", tier=Tier.INTERRUPTIBLE), 0)
    assert not q.available and q.refusal is not None
    assert q.refusal.code is RefusalCode.NOT_ISOLATED
    assert q.refusal.min_winning_bid is None


def test_network_asks_lease_only_where_egress_is_filtered_or_the_host_is_theirs() -> None:
    no_egress = dataclasses.replace(
        owned(gpu_host("sandbox-no-egress", n=1), "acct-a", isolated=True), egress=False
    )
    filtered = owned(gpu_host("sandbox-egress", n=1), "acct-c", isolated=True)
    m = market((no_egress, offer(1)), (filtered, offer(3)))
    asks = dataclasses.replace(req("acct-b", lease_id="n1"), network=True)
    assert granted(m.lease(asks, 0)).leases[0].host_id == "sandbox-egress"
    # The filtering host is full: the other one stays closed to a stranger's network ask,
    # open to the same stranger without one, and to its owner's network ask.
    m2 = market((no_egress, offer(1)))
    r = refused(m2.lease(dataclasses.replace(asks, lease_id="n2"), 0))
    assert r.code is RefusalCode.NOT_ISOLATED
    assert "filters network egress" in r.message
    owner = dataclasses.replace(req("acct-a", lease_id="a1"), network=True)
    assert granted(m2.lease(owner, 0)).leases[0].host_id == "sandbox-no-egress"
    m3 = market((no_egress, offer(1)))
    assert granted(m3.lease(req("acct-b", lease_id="b1"), 0)).leases[0].host_id == (
        "sandbox-no-egress"
    )


def test_a_strangers_cluster_leases_only_hosts_that_build_its_private_network() -> None:
    plain = dataclasses.replace(
        owned(gpu_host("sandbox-no-clusternet", n=1), "acct-a", isolated=True),
        cluster_net=False,
    )
    able = [owned(gpu_host(f"sandbox-net-{i}", n=1), "acct-c", isolated=True) for i in (1, 2)]
    gang = dataclasses.replace(req("acct-b", lease_id="g1"), nodes=2, cluster=True)
    m = market((plain, offer(1)), (able[0], offer(3)), (able[1], offer(3)))
    hosts = {lease.host_id for lease in granted(m.lease(gang, 0)).leases}
    assert hosts == {"sandbox-net-1", "sandbox-net-2"}  # not the cheaper one
    # One able host is not enough for two nodes: refused, saying why.
    m2 = market((plain, offer(1)), (able[0], offer(3)))
    r = refused(m2.lease(dataclasses.replace(gang, lease_id="g2"), 0))
    assert r.code is RefusalCode.NOT_ISOLATED
    assert "private network" in r.message
    # The same stranger's single pod, and the host owner's own cluster, may use it.
    assert granted(m2.lease(req("acct-b", lease_id="b1"), 0)).leases
    m3 = market((plain, offer(1)), (able[0], offer(3)))
    own = dataclasses.replace(req("acct-a", lease_id="a1"), nodes=2, cluster=True)
    assert {lease.host_id for lease in granted(m3.lease(own, 0)).leases} == {
        "sandbox-no-clusternet",
        "sandbox-net-1",
    }
