"""A private network shared by a group of sandboxes on one host: the primitive pod clusters
need (each member reachable by the others on a port range, by nobody else).

The group's switch is a Linux bridge in a network namespace of its own (the *hub*), which has
no other interface: no route to the host, its loopback or anywhere else. Each member sandbox
(its network namespace, named by the pid of a process in it) gets one end of a veth pair as
``cg0`` with the next address of the group's /24; the other end is a port of the bridge. An
nftables table in each member's namespace lets through, on ``cg0``, only connections to and
from the group's subnet on the group's ports (and their replies); everything else on ``cg0``
is dropped. The sandbox cannot change any of it (no capabilities, seccomp).

Across hosts (:meth:`GroupNetwork.link_peers`), the bridge gets one more port: a VXLAN
device (the group's VNI) whose UDP socket lives in the host's namespace, on the port this
host announced, and which floods the group's frames to the other members' hosts (their
address and announced port). The hub still has no address and no route: frames from a peer
reach only the bridge, and each member's filter still admits only the group's subnet and
ports. VXLAN neither encrypts nor authenticates: it is meant for a network between hosts
that outsiders cannot send UDP into (docs/pods.md, "The cluster network").

It composes with filtered egress (:mod:`crucible.agent.egress`): that filter accepts traffic
on ``cg0`` and leaves it to this one. The agent (root) builds it with ``ip`` (iproute2),
``bridge`` and ``nft``. Pod clusters (:mod:`crucible.agent.clusternet`) call
:meth:`GroupNetwork.join` for each member sandbox, between bwrap's ``--info-fd`` and
``--block-fd`` as egress does.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

__all__ = ["GROUP_INTERFACE", "GROUP_MTU", "GroupNetError", "GroupNetwork", "member_ruleset"]

GROUP_INTERFACE = "cg0"
_TABLE = "crucible_group"
_MAX_MEMBERS = 250  # addresses .2 to .251 of the group's /24
# The MTU of every link of a group: VXLAN adds 50 bytes to each frame, and 1400 leaves room
# for that on a 1500-byte underlay (and for a tunnel under it).
GROUP_MTU = 1400
# How long a VNI that another network here held may take to be freed (see link_peers).
_VNI_FREED_WITHIN_S = 5.0


class GroupNetError(RuntimeError):
    """The group network could not be built or joined (the message says why)."""


def _run(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        argv,
        input=stdin.encode() if stdin is not None else None,
        capture_output=True,
        check=False,
        timeout=10,
    )
    if done.returncode != 0:
        raise GroupNetError(
            f"{' '.join(argv[:6])} failed: {done.stderr.decode('utf-8', 'replace').strip()[-300:]}"
        )


def member_ruleset(subnet: ipaddress.IPv4Network, port_lo: int, port_hi: int) -> str:
    """The nftables table of one member's namespace (``nft -f`` input)."""
    ports = str(port_lo) if port_lo == port_hi else f"{port_lo}-{port_hi}"
    iface = GROUP_INTERFACE
    return "\n".join(
        [
            f"table inet {_TABLE} {{",
            "  chain input {",
            "    type filter hook input priority 0; policy accept;",
            f'    iifname "{iface}" ct state established,related accept',
            f'    iifname "{iface}" ip saddr {subnet} meta l4proto {{ tcp, udp }} '
            f"th dport {ports} accept",
            f'    iifname "{iface}" drop',
            "  }",
            "  chain output {",
            "    type filter hook output priority 0; policy accept;",
            f'    oifname "{iface}" ct state established,related accept',
            f'    oifname "{iface}" ip daddr {subnet} meta l4proto {{ tcp, udp }} '
            f"th dport {ports} accept",
            f'    oifname "{iface}" drop',
            "  }",
            "}",
            "",
        ]
    )


@dataclass
class GroupNetwork:
    """One group's private network. ``subnet`` is a /24 the host uses for nothing else;
    members reach each other on ``[port_lo, port_hi]`` (TCP and UDP). Thread-safe."""

    subnet: ipaddress.IPv4Network
    port_lo: int
    port_hi: int
    hub: str = field(default_factory=lambda: f"crucible-g-{uuid.uuid4().hex[:10]}")
    members: dict[int, str] = field(default_factory=dict)  # pid → its address
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next: int = 2
    _up: bool = False
    _vxlans: list[str] = field(default_factory=list)  # in the hub (link_peers)

    def __post_init__(self) -> None:
        if self.subnet.prefixlen != 24:
            raise ValueError(f"a group network is a /24, got {self.subnet}")
        if not 1 <= self.port_lo <= self.port_hi <= 65535:
            raise ValueError(f"ports run from 1 to 65535, got {self.port_lo}-{self.port_hi}")

    def create(self) -> None:
        """The hub namespace and its bridge. Raises :class:`GroupNetError`."""
        _run("ip", "netns", "add", self.hub)
        self._up = True
        try:
            _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        except GroupNetError:
            self.close()
            raise

    def link_peers(self, vni: int, local_port: int, peers: list[tuple[str, int]]) -> None:
        """Extend the bridge to other hosts: a VXLAN device with ``vni`` listening on UDP
        ``local_port`` of this host, flooding to each ``(address, port)`` of ``peers`` (the
        other members' hosts). Raises :class:`GroupNetError`."""
        if not 1 <= vni < 1 << 24:
            raise ValueError(f"a VNI runs from 1 to {(1 << 24) - 1}, got {vni}")
        name = f"v{uuid.uuid4().hex[:12]}"
        # Made in the host's namespace (its socket stays there), then moved into the hub.
        # close() deletes it before the hub, which frees its VNI at once; a network that
        # was never closed (the agent killed) leaves it to the kernel, which frees a deleted
        # namespace's devices in the background: wait for that, a few seconds at most.
        deadline = time.monotonic() + _VNI_FREED_WITHIN_S
        while True:
            try:
                _run(
                    "ip", "link", "add", name, "type", "vxlan", "id", str(vni),
                    "dstport", str(local_port), "nolearning",
                )  # fmt: skip
                break
            except GroupNetError as exc:
                if "already exists" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            _run("ip", "link", "set", name, "netns", self.hub)
        except GroupNetError:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
            raise
        with self._lock:
            self._vxlans.append(name)
        _run("ip", "-n", self.hub, "link", "set", name, "master", "br0", "mtu", str(GROUP_MTU))
        for address, port in peers:
            _run(
                "bridge", "-n", self.hub, "fdb", "append", "00:00:00:00:00:00",
                "dev", name, "dst", address, "port", str(port),
            )  # fmt: skip
        _run("ip", "-n", self.hub, "link", "set", name, "up")

    def join(self, pid: int, address: str | None = None) -> str:
        """Connect the network namespace of ``pid`` (a member sandbox, not yet running its
        code) to the group, at ``address`` (one of the subnet's; default: the next free);
        its address on ``cg0``. Raises :class:`GroupNetError`."""
        if address is not None and (
            ipaddress.IPv4Address(address) not in self.subnet
            or address in (str(self.subnet.network_address), str(self.subnet.broadcast_address))
        ):
            raise ValueError(f"{address} is not a member address of {self.subnet}")
        with self._lock:
            if not self._up:
                raise GroupNetError("the group network is closed")
            if pid in self.members:
                return self.members[pid]
            if address is None:
                if self._next > _MAX_MEMBERS + 1:
                    raise GroupNetError(f"a group network holds at most {_MAX_MEMBERS} members")
                address = str(self.subnet.network_address + self._next)
                self._next += 1
        port = f"p{uuid.uuid4().hex[:10]}"
        netns = f"/proc/{pid}/ns/net"
        # Both ends are made in the hub; one then moves into the member's namespace.
        _run("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "tmp0")
        _run("ip", "-n", self.hub, "link", "set", "tmp0", "netns", str(pid))
        _run(
            "ip", "-n", self.hub, "link", "set", port, "master", "br0", "mtu", str(GROUP_MTU), "up"
        )  # fmt: skip
        inside = ["nsenter", f"--net={netns}"]
        _run(*inside, "ip", "link", "set", "tmp0", "name", GROUP_INTERFACE)
        _run(
            *inside, "nft", "-f", "-", stdin=member_ruleset(self.subnet, self.port_lo, self.port_hi)
        )
        _run(
            *inside,
            "ip",
            "addr",
            "add",
            f"{address}/{self.subnet.prefixlen}",
            "dev",
            GROUP_INTERFACE,
        )
        _run(*inside, "ip", "link", "set", GROUP_INTERFACE, "mtu", str(GROUP_MTU), "up")
        with self._lock:
            self.members[pid] = address
        return address

    def close(self) -> None:
        """Remove the hub (the members' ``cg0`` ends go with their veth pairs). Its VXLAN
        devices are deleted first: then their VNIs are free when this returns (the same
        cluster started again here at once reuses its VNI); a deleted namespace's devices
        are freed by the kernel in the background."""
        with self._lock:
            if not self._up:
                return
            self._up = False
            vxlans, self._vxlans = self._vxlans, []
        for name in vxlans:
            subprocess.run(
                ["ip", "-n", self.hub, "link", "del", name], capture_output=True, check=False
            )
        subprocess.run(["ip", "netns", "del", self.hub], capture_output=True, check=False)
