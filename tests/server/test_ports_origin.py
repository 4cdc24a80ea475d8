"""Reading a ports host (``{pod}-{port}.{CRUCIBLE_PORTS_DOMAIN}``) back into a pod and a port,
and refusing a ports domain that is not a DNS name (api/ports_origin.py)."""

from __future__ import annotations

import pytest

from crucible.server.api.ports_origin import check_domain, ports_target


def test_a_ports_host_names_a_pod_and_a_port() -> None:
    d = "ports.localhost"
    assert ports_target("pd-01abc-8888.ports.localhost", d) == ("pd-01abc", 8888)
    assert ports_target("pd-01abc-1.ports.localhost", d) == ("pd-01abc", 1)
    # Other hosts are the exchange's.
    for other in ("127.0.0.1", "localhost", "exchange.example.com", "xports.localhost", ""):
        assert ports_target(other, d) is None, other
    # Under the domain but naming no port: refused (True), never the exchange.
    for bad in (
        "ports.localhost",
        "pd-x.ports.localhost",
        "a.pd-x-80.ports.localhost",
        "pd-x-0.ports.localhost",
        "pd-x-70000.ports.localhost",
        "-80.ports.localhost",
    ):
        assert ports_target(bad, d) is True, bad


def test_the_ports_domain_must_be_a_dns_name() -> None:
    assert check_domain(" .Ports.Example.COM. ") == "ports.example.com"
    for bad in ("http://ports.example.com", "ports example", "a..b", "*.ports.example.com", "."):
        with pytest.raises(ValueError, match="CRUCIBLE_PORTS_DOMAIN"):
            check_domain(bad)
