"""A cluster's private network, as the server plans it (services/clusters.network_plans):
each member's address by rank, one subnet and VXLAN id per cluster, and for each member the
other members' hosts (never its own)."""

from __future__ import annotations

import ipaddress

from crucible.server.services.clusters import network_plans


def test_members_get_addresses_by_rank_and_the_other_hosts_as_peers() -> None:
    plans = network_plans("cl-abc", [("192.0.2.10", 4789), ("192.0.2.11", 4789), ("h3", 5000)])
    subnet = ipaddress.IPv4Network(plans[0].subnet)
    assert subnet.prefixlen == 24 and subnet.subnet_of(ipaddress.IPv4Network("10.201.0.0/16"))
    assert [p.address for p in plans] == [str(subnet.network_address + i) for i in (2, 3, 4)]
    assert len({(p.subnet, p.vni) for p in plans}) == 1  # one network
    assert [(x.address, x.port) for x in plans[0].peers] == [("192.0.2.11", 4789), ("h3", 5000)]
    assert [(x.address, x.port) for x in plans[2].peers] == [
        ("192.0.2.10", 4789),
        ("192.0.2.11", 4789),
    ]
    assert all(p.port_lo <= 29500 and p.port_hi == 65535 for p in plans)


def test_two_agents_of_one_machine_are_two_peers() -> None:
    plans = network_plans("cl-abc", [("127.0.0.1", 40001), ("127.0.0.1", 40002)])
    assert [(x.address, x.port) for x in plans[0].peers] == [("127.0.0.1", 40002)]
    assert [(x.address, x.port) for x in plans[1].peers] == [("127.0.0.1", 40001)]


def test_the_network_is_fixed_by_the_cluster() -> None:
    one = network_plans("cl-one", [("a", 1), ("b", 1)])
    assert network_plans("cl-one", [("c", 2), ("d", 2)])[0].vni == one[0].vni
    others = {network_plans(f"cl-{i}", [("a", 1), ("b", 1)])[0].vni for i in range(50)}
    assert len(others) == 50  # spread over 2^24 ids
