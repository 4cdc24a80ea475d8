"""The egress plan and its nftables ruleset (pure: no sandbox, an injected resolver)."""

from __future__ import annotations

import ipaddress

import pytest

from crucible.agent.egress import DNS_ADDRESS, EgressError, host_addresses, plan_egress, ruleset

HOST = [ipaddress.IPv4Network("192.0.2.7/32")]


def fake_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(name: str) -> list[str]:
        if name not in table:
            raise OSError("Name or service not known")
        return table[name]

    return resolve


def test_an_allowlist_resolves_names_at_start_and_writes_them_to_hosts() -> None:
    plan = plan_egress(
        ["pypi.org:443", "10.1.2.0/24:5432"],
        server_url="http://127.0.0.1:8000",
        resolve=fake_resolver({"pypi.org": ["151.101.0.223", "151.101.64.223"]}),
        addresses=HOST,
    )
    assert not plan.public
    assert ("151.101.0.223", "pypi.org") in plan.hosts
    assert "151.101.64.223 pypi.org" in plan.hosts_file()
    assert "nameserver" not in plan.resolv_conf()  # no DNS: only /etc/hosts answers
    rules = ruleset(plan)
    assert "ip daddr 151.101.0.223/32 meta l4proto { tcp, udp } th dport 443 accept" in rules
    assert "ip daddr 10.1.2.0/24 meta l4proto { tcp, udp } th dport 5432 accept" in rules
    assert f"{DNS_ADDRESS} meta l4proto" not in rules


def test_refusals_come_before_any_accept_and_cover_host_server_and_metadata() -> None:
    plan = plan_egress(True, server_url="http://127.0.0.1:8000", addresses=HOST)
    rules = ruleset(plan).splitlines()
    never = next(i for i, line in enumerate(rules) if "192.0.2.7/32" in line)
    assert "169.254.0.0/16" in rules[never] and "127.0.0.0/8" in rules[never]
    assert "reject" in rules[never]
    server = next(i for i, line in enumerate(rules) if "127.0.0.1/32" in line)
    assert "th dport 8000" in rules[server] and "reject" in rules[server]
    first_accept = next(
        i for i, line in enumerate(rules) if "accept" in line and "oifname" not in line
    )
    assert never < first_accept and server < first_accept
    assert "policy drop" in ruleset(plan)
    assert f"nameserver {DNS_ADDRESS}" in plan.resolv_conf()


def test_a_name_that_does_not_resolve_fails_the_start_with_its_name() -> None:
    with pytest.raises(EgressError, match=r"nowhere\.example\.org did not resolve"):
        plan_egress(
            ["nowhere.example.org:443"],
            server_url="http://127.0.0.1:8000",
            resolve=fake_resolver({}),
            addresses=HOST,
        )


def test_host_addresses_reads_the_local_routes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trie = tmp_path / "fib_trie"
    trie.write_text(
        "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n"
        "     |-- 192.0.2.255\n        /32 link BROADCAST\n"
        "     |-- 192.0.2.2\n        /32 host LOCAL\n"
    )
    assert [str(a) for a in host_addresses(str(trie))] == ["127.0.0.1/32", "192.0.2.2/32"]
