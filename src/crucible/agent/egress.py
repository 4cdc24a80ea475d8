"""Filtered network egress for a sandbox: user-mode networking plus a per-sandbox filter.

A sandbox that asks for egress (``network=True`` or an allowlist, see
:mod:`crucible.protocol.egress`) still gets a network namespace of its own. Before anything
runs in it (bwrap waits on ``--block-fd``), the agent, as root:

1. installs an nftables ruleset in that namespace (:func:`ruleset`): outgoing packets are
   dropped unless they go to the sandbox's own loopback or match the ask, and packets to the
   host's own addresses, the control plane's address and port, loopback, link-local
   (169.254.0.0/16), multicast and the user-mode gateway are refused before any ask is
   considered. The sandbox has no capability to change it (all are dropped, and seccomp
   refuses ``setns`` and new namespaces);
2. starts ``slirp4netns`` (Debian ``slirp4netns``) on that namespace: a ``tap0`` device whose
   traffic the slirp process carries through ordinary sockets of the host, with
   ``--disable-host-loopback`` (the gateway 10.0.2.2 never reaches the host's 127.0.0.1),
   ``--enable-sandbox`` and ``--enable-seccomp`` (the slirp process itself is confined).

DNS. With ``network=True`` the sandbox's ``/etc/resolv.conf`` names slirp's forwarder
(10.0.2.3), which asks the host's resolvers; the filter lets port 53 of that address through.
With an allowlist the agent resolves the allowlisted names when the sandbox starts (IPv4, on
the host) and the sandbox gets them in its ``/etc/hosts``; it has no resolver at all, so
nothing else resolves and DNS cannot carry data out. An address a name resolves to that the
filter never allows (the host, loopback, link-local) stays refused. Names are resolved once
per sandbox: a sandbox lives until it has been idle ``CRUCIBLE_ZYGOTE_IDLE_S``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crucible.agent.groupnet import GROUP_INTERFACE
from crucible.protocol.egress import NEVER_NETWORKS, EgressTarget, parse_target

__all__ = [
    "DNS_ADDRESS",
    "EgressError",
    "EgressLink",
    "EgressPlan",
    "EgressRule",
    "egress_tools_problem",
    "host_addresses",
    "plan_egress",
    "ruleset",
    "wait_child_pid",
]

log = logging.getLogger(__name__)

# slirp4netns's fixed addresses: the sandbox's network, its gateway (the host) and DNS.
SLIRP_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
DNS_ADDRESS = "10.0.2.3"
# Addresses "everything public" (network=True) does not include: private, shared (CGNAT)
# and benchmarking networks. An allowlist may name them explicitly.
PRIVATE_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15")
)
_TABLE = "crucible_egress"
_READY_TIMEOUT_S = 10.0


class EgressError(RuntimeError):
    """Filtered egress could not be set up for a sandbox (the message says why)."""


@dataclass(frozen=True)
class EgressRule:
    """Resolved: packets to ``network`` on a port in ``[port_lo, port_hi]`` (TCP and UDP)."""

    network: ipaddress.IPv4Network
    port_lo: int
    port_hi: int

    def match(self) -> str:
        ports = (
            str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"
        )
        return f"ip daddr {self.network} meta l4proto {{ tcp, udp }} th dport {ports}"


@dataclass(frozen=True)
class EgressPlan:
    """What one sandbox may reach, resolved on the host when it starts."""

    public: bool  # network=True: every public IPv4 address (with DNS through slirp)
    allowed: tuple[EgressRule, ...] = ()  # an allowlist, resolved
    hosts: tuple[tuple[str, str], ...] = ()  # (address, name) for the sandbox's /etc/hosts
    never: tuple[ipaddress.IPv4Network, ...] = ()  # refused whatever the ask
    never_ports: tuple[EgressRule, ...] = ()  # the control plane's address and port
    # Only for the agent's start-up probe: one host address and port it listens on, let
    # through ahead of ``never`` so the probe can show that the user-mode path carries traffic.
    probe: EgressRule | None = None

    def key(self) -> str:
        """A stable text for sandbox keys (same plan, same sandbox)."""
        return json.dumps(
            {
                "public": self.public,
                "allowed": [r.match() for r in self.allowed],
                "hosts": list(self.hosts),
            },
            sort_keys=True,
        )

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "127.0.1.1 crucible"]
        lines += [f"{addr} {name}" for addr, name in self.hosts]
        return "\n".join(lines) + "\n"

    def resolv_conf(self) -> str:
        # Without a nameserver glibc asks 127.0.0.1, the sandbox's own empty loopback: every
        # lookup that /etc/hosts does not answer fails at once.
        return f"nameserver {DNS_ADDRESS}\n" if self.public else "options attempts:1 timeout:1\n"


def host_addresses(fib_trie: str = "/proc/net/fib_trie") -> list[ipaddress.IPv4Network]:
    """Every IPv4 address of this host (its local routes), as /32 networks."""
    out: set[ipaddress.IPv4Network] = set()
    last = ""
    try:
        with open(fib_trie, encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif "/32 host LOCAL" in text and last:
                    with contextlib.suppress(ValueError):
                        out.add(ipaddress.IPv4Network(last + "/32"))
    except OSError:
        pass
    return sorted(out)


def _server_rule(server_url: str) -> list[EgressRule]:
    parsed = urllib.parse.urlsplit(server_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.hostname or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return []
    nets = {ipaddress.IPv4Network(str(info[4][0]) + "/32") for info in infos}
    return [EgressRule(n, port, port) for n in sorted(nets)]


Resolver = Callable[[str], list[str]]


def _resolve(name: str) -> list[str]:
    infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def plan_egress(
    ask: bool | list[str],
    *,
    server_url: str,
    resolve: Resolver = _resolve,
    addresses: list[ipaddress.IPv4Network] | None = None,
) -> EgressPlan:
    """The plan for a container's ``network`` ask (True or an allowlist). Raises
    :class:`EgressError` when an allowlisted name does not resolve on this host."""
    never = tuple(
        sorted({*NEVER_NETWORKS, *(addresses if addresses is not None else host_addresses())})
    )
    never_ports = tuple(_server_rule(server_url))
    if ask is True:
        return EgressPlan(public=True, never=never, never_ports=never_ports)
    if not ask:
        raise ValueError("no egress was asked")
    allowed: list[EgressRule] = []
    names: list[tuple[str, str]] = []
    for text in ask:
        target: EgressTarget = parse_target(text)
        if target.network is not None:
            allowed.append(EgressRule(target.network, target.port_lo, target.port_hi))
            continue
        assert target.name is not None
        try:
            found = _addresses_of(target.name, resolve)
        except OSError as exc:
            raise EgressError(
                f"network target {text!r}: {target.name} did not resolve on this host ({exc}); "
                "check the name, or allow its address instead"
            ) from None
        for addr in found:
            allowed.append(
                EgressRule(ipaddress.IPv4Network(addr + "/32"), target.port_lo, target.port_hi)
            )
            names.append((addr, target.name))
    return EgressPlan(
        public=False,
        allowed=tuple(allowed),
        hosts=tuple(sorted(set(names))),
        never=never,
        never_ports=never_ports,
    )


def _addresses_of(name: str, resolve: Resolver) -> list[str]:
    found = resolve(name)
    if not found:
        raise OSError("no IPv4 address")
    return found


def ruleset(plan: EgressPlan) -> str:
    """The nftables ruleset for one sandbox's network namespace (``nft -f`` input)."""
    refuse = "reject with icmpx type admin-prohibited"
    lines = [
        f"table inet {_TABLE} {{",
        "  chain output {",
        "    type filter hook output priority 0; policy drop;",
        '    oifname "lo" accept',
        # A group's private network (agent/groupnet.py) has its own filter on this interface.
        f'    oifname "{GROUP_INTERFACE}" accept',
        f"    meta nfproto ipv6 {refuse}",
    ]
    if plan.probe is not None:
        lines.append(f"    {plan.probe.match()} accept")
    never = ", ".join(str(n) for n in plan.never)
    if never:
        lines.append(f"    ip daddr {{ {never} }} {refuse}")
    lines += [f"    {r.match()} {refuse}" for r in plan.never_ports]
    if plan.public:
        lines.append(f"    ip daddr {DNS_ADDRESS} meta l4proto {{ tcp, udp }} th dport 53 accept")
    lines.append(f"    ip daddr {SLIRP_NETWORK} {refuse}")
    if plan.public:
        private = ", ".join(str(n) for n in PRIVATE_NETWORKS)
        lines.append(f"    ip daddr {{ {private} }} {refuse}")
        lines.append("    meta l4proto { tcp, udp, icmp } accept")
    lines += [f"    {r.match()} accept" for r in plan.allowed]
    lines += [f"    {refuse}", "  }", "}", ""]
    return "\n".join(lines)


def egress_tools_problem() -> str | None:
    """Why this host cannot filter egress (None: the tools are there, and the agent is root).
    Whether the filter really holds is measured by the isolation probe."""
    missing = [t for t in ("slirp4netns", "nft", "nsenter") if shutil.which(t) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install them (apt-get install slirp4netns "
            "nftables util-linux)"
        )
    if os.geteuid() != 0:
        return "the agent is not root, so it cannot install a sandbox's egress filter"
    return None


@dataclass
class EgressLink:
    """The user-mode network of one sandbox: its filter and its slirp4netns process."""

    plan: EgressPlan
    slirp: subprocess.Popen[bytes] | None = None
    _exit_w: int | None = field(default=None, repr=False)
    _out: Any = field(default=None, repr=False)  # slirp4netns's output (a temporary file)

    def attach(self, pid: int) -> None:
        """Filter, then connect, the network namespace of ``pid`` (the sandbox's first
        process, blocked until this returns). Raises :class:`EgressError`."""
        netns = f"/proc/{pid}/ns/net"
        rules = ruleset(self.plan)
        done = subprocess.run(
            ["nsenter", f"--net={netns}", "nft", "-f", "-"],
            input=rules.encode(),
            capture_output=True,
            check=False,
            timeout=_READY_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise EgressError(
                "could not install the sandbox's egress filter: "
                + done.stderr.decode("utf-8", "replace").strip()[-400:]
            )
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        ready_r, ready_w = os.pipe()
        exit_r, self._exit_w = os.pipe()
        try:
            self.slirp = subprocess.Popen(
                [
                    "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    "--enable-sandbox",
                    "--enable-seccomp",
                    f"--ready-fd={ready_w}",
                    f"--exit-fd={exit_r}",
                    "--netns-type=path",
                    netns,
                    "tap0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                pass_fds=(ready_w, exit_r),
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            ready, _, _ = select.select([ready_r], [], [], _READY_TIMEOUT_S)
            ok = bool(ready) and os.read(ready_r, 1) == b"1"
        finally:
            os.close(ready_r)
        if not ok:
            out = self.close()
            raise EgressError(f"slirp4netns did not come up for the sandbox: {out[-400:]}")

    def close(self) -> str:
        """Stop the slirp process (the sandbox's network goes with it); its output."""
        if self._exit_w is not None:
            with contextlib.suppress(OSError):
                os.close(self._exit_w)
            self._exit_w = None
        if self.slirp is None:
            return ""
        proc, self.slirp = self.slirp, None
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = b""
        if self._out is not None:
            self._out.seek(0)
            out = self._out.read()[-4000:]
            self._out.close()
            self._out = None
        return out.decode("utf-8", "replace").strip()


def wait_child_pid(info_fd: int, timeout_s: float = _READY_TIMEOUT_S) -> int:
    """The sandbox's first process, from bwrap's ``--info-fd`` JSON."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([info_fd], [], [], max(0.0, left))
        if not ready:
            raise EgressError("bwrap did not report its sandbox's process in time")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
        with contextlib.suppress(ValueError):
            info: dict[str, Any] = json.loads(data)
            return int(info["child-pid"])
    raise EgressError(f"bwrap ended before its sandbox started: {data[-200:]!r}")
