"""A function's network egress: ``network=False`` (none, the default), ``network=True``
(every public IPv4 address) or an allowlist of ``"HOST:PORT"`` targets.

One grammar for the SDK, the server and the agent. A target is ``HOST:PORT`` or
``HOST:LO-HI`` where HOST is a DNS name (resolved by the agent when the sandbox starts), an
IPv4 address or an IPv4 network in CIDR form (``10.1.2.0/24``). Whatever the ask, a sandbox
never reaches the host's loopback, the host's own addresses, the control plane's port or
link-local addresses (169.254.0.0/16): targets naming them are refused here, and the agent's
filter drops them whatever a name resolves to (:mod:`crucible.agent.egress`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

__all__ = [
    "MAX_TARGETS",
    "NEVER_NETWORKS",
    "EgressTarget",
    "NetworkAsk",
    "asks_network",
    "check_network",
    "parse_target",
]

MAX_TARGETS = 64
# Never reachable from a sandbox, whatever it asks: this host (loopback), "this network",
# link-local (cloud metadata services live at 169.254.169.254), multicast and reserved.
NEVER_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PORT = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")
_EXAMPLE = 'e.g. "pypi.org:443" or "10.1.2.0/24:5432"'


@dataclass(frozen=True)
class EgressTarget:
    """One allowlist entry: a DNS name or an IPv4 network, and a port range (inclusive)."""

    name: str | None  # a DNS name (lower case), resolved by the agent at sandbox start
    network: ipaddress.IPv4Network | None  # an address (/32) or a network
    port_lo: int
    port_hi: int

    def __str__(self) -> str:
        host = self.name if self.name is not None else str(self.network).removesuffix("/32")
        ports = (
            str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"
        )
        return f"{host}:{ports}"


def _ports(text: str, target: str) -> tuple[int, int]:
    m = _PORT.match(text)
    if m is None:
        raise ValueError(
            f"network target {target!r}: the port must be a number from 1 to 65535 or a range "
            f"LO-HI ({_EXAMPLE})"
        )
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(
            f"network target {target!r}: ports run from 1 to 65535, low before high ({_EXAMPLE})"
        )
    return lo, hi


def parse_target(text: Any) -> EgressTarget:
    """Parse ``"HOST:PORT"``; raises ValueError with a sentence naming the target and what is
    allowed."""
    if not isinstance(text, str):
        raise ValueError(
            f"each network target must be a string HOST:PORT ({_EXAMPLE}), got "
            f"{type(text).__name__}"
        )
    shown = text if len(text) <= 80 else text[:77] + "..."
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(
            f"network target {shown!r} needs a host and a port: HOST:PORT ({_EXAMPLE})"
        )
    if host.startswith("[") or ":" in host:
        raise ValueError(
            f"network target {shown!r}: IPv6 is not supported (sandboxes have IPv4 egress only)"
        )
    lo, hi = _ports(port, shown)
    host = host.lower()
    if re.fullmatch(r"[0-9./]+", host):
        try:
            net = ipaddress.IPv4Network(host, strict=False)
        except ValueError:
            raise ValueError(
                f"network target {shown!r}: {host!r} is not an IPv4 address or network ({_EXAMPLE})"
            ) from None
        for never in NEVER_NETWORKS:
            if net.overlaps(never):
                hint = "; for every public address use network=True" if net.prefixlen < 8 else ""
                raise ValueError(
                    f"network target {shown!r} overlaps {never}, which a sandbox may never reach "
                    f"(loopback, link-local metadata, multicast or reserved){hint}"
                )
        return EgressTarget(None, net, lo, hi)
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"network target {shown!r}: {host!r} is not a DNS name, an IPv4 address or an IPv4 "
            f"network ({_EXAMPLE})"
        )
    if labels[-1] in ("localhost", "local", "internal") or len(labels) < 2:
        raise ValueError(
            f"network target {shown!r}: {host!r} names this host or a local-only domain; a "
            "sandbox never reaches the host (use a public name with a dot, e.g. pypi.org)"
        )
    return EgressTarget(".".join(labels), None, lo, hi)


def check_network(value: Any) -> bool | list[str]:
    """The normalized ask: a bool, or the allowlist's targets in canonical form (sorted, no
    duplicates). Raises ValueError naming what is wrong."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        raise ValueError(
            f"network must be True, False or a list of HOST:PORT strings, got the string "
            f"{value[:60]!r}; write network=[{value[:60]!r}]"
        )
    if not isinstance(value, list | tuple):
        raise ValueError(
            f"network must be True, False or a list of HOST:PORT strings ({_EXAMPLE}), got "
            f"{type(value).__name__}"
        )
    if not value:
        raise ValueError(
            "network=[] allows nothing: use network=False for no network, or name the targets "
            f"({_EXAMPLE})"
        )
    if len(value) > MAX_TARGETS:
        raise ValueError(f"network allows at most {MAX_TARGETS} targets, got {len(value)}")
    return sorted({str(parse_target(t)) for t in value})


def asks_network(value: bool | list[str] | None) -> bool:
    """Whether a function's ``network`` asks for any egress at all."""
    return bool(value)


def _wire(value: Any) -> bool | list[str]:
    return check_network(value)


# The wire field: a bool, or an allowlist checked and normalized on arrival.
NetworkAsk = Annotated[bool | list[str], AfterValidator(_wire)]
