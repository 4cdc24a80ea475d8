"""The private networks of pod clusters on this host: one group network per cluster run
(:mod:`crucible.agent.groupnet`), shared by the cluster's members on this host and linked by
VXLAN to the members' other hosts, built when its first member's sandbox starts and removed
when its last one ends.

The server hands each member its plan (:class:`~crucible.protocol.pods.ClusterNetPlan`): the
cluster's subnet, VNI and port range, the member's own address, and where the other members'
hosts listen. The agent announces where it listens (its UDP port, ``CRUCIBLE_CLUSTER_NET_PORT``
or a free one chosen at start-up) in its isolation report, once :func:`measure` has shown it
can build such a network.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from crucible.agent.groupnet import GroupNetError, GroupNetwork
from crucible.protocol.pods import ClusterNetPlan

__all__ = [
    "ClusterNetworks",
    "cluster_net_tools_problem",
    "free_udp_port",
    "measure",
    "port_guard_ruleset",
    "wait_netns_entered",
]


def cluster_net_tools_problem() -> str | None:
    """Why this host cannot build cluster networks before trying (None: it may)."""
    missing = [t for t in ("ip", "bridge", "nft", "nsenter") if shutil.which(t) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install them (apt-get install iproute2 "
            "nftables util-linux)"
        )
    if os.geteuid() != 0:
        return "the agent is not root, so it cannot build network namespaces and bridges"
    return None


def free_udp_port() -> int:
    """A UDP port nothing on this host listens on now (for the VXLAN socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def wait_netns_entered(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until ``pid`` (started by ``ip netns exec``) is in a network namespace other than
    this process's: joining it before would put the group's interface on the host."""
    own = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + timeout_s
    while os.readlink(f"/proc/{pid}/ns/net") == own:
        if time.monotonic() > deadline:
            raise GroupNetError(f"process {pid} did not enter its network namespace")
        time.sleep(0.01)


def measure(port: int) -> str | None:
    """Whether this host builds cluster networks, measured: a group network with a VXLAN
    link on ``port`` and one member namespace joined to it. None when all of that held, else
    what failed."""
    problem = cluster_net_tools_problem()
    if problem is not None:
        return problem
    net = GroupNetwork(ipaddress.IPv4Network("10.254.254.0/24"), 1024, 65535)
    ns = f"crucible-probe-{uuid.uuid4().hex[:10]}"
    holder: subprocess.Popen[bytes] | None = None
    try:
        net.create()
        net.link_peers(1, port, [])
        subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=True, timeout=10)
        # A process in that namespace stands in for a member sandbox.
        holder = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sleep", "30"], stdin=subprocess.DEVNULL
        )
        wait_netns_entered(holder.pid)
        net.join(holder.pid, "10.254.254.2")
    except (GroupNetError, OSError, subprocess.SubprocessError) as exc:
        return f"could not build a cluster network: {exc}"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        net.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    return None


@dataclass
class _Net:
    group: GroupNetwork
    users: set[str] = field(default_factory=set)  # sandbox keys of its members here
    peers: frozenset[str] = frozenset()  # the other hosts' addresses


_NETNS_DIR = "/run/netns"


def port_guard_ruleset(table: str, port: int, peers: set[str]) -> str:
    """The host's nftables table (``nft -f`` input) that drops UDP to this agent's cluster
    port unless it comes from a host of one of its clusters (replaces the table)."""
    allowed = ", ".join(sorted(peers))
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain input {",
        "    type filter hook input priority -10; policy accept;",
        f"    meta nfproto ipv6 udp dport {port} counter drop",
    ]
    if allowed:
        lines.append(f"    udp dport {port} ip saddr {{ {allowed} }} accept")
    lines += [f"    udp dport {port} counter drop", "  }", "}", ""]
    return "\n".join(lines)


def _ip_of(address: str) -> str:
    """A peer host's IPv4 address (hosts may announce a name). Raises GroupNetError."""
    try:
        return socket.gethostbyname(address)
    except OSError as exc:
        raise GroupNetError(f"cluster peer {address!r} does not resolve here: {exc}") from None


class ClusterNetworks:
    """This host's cluster networks, by cluster run. Thread-safe.

    ``owner`` tags the hub namespaces of this agent (several agents may share a machine): at
    start, hubs an earlier run of the same agent left behind (it was killed) are removed.

    While it has networks, a table of the host's nftables (:func:`port_guard_ruleset`)
    accepts UDP on ``port`` only from their peers' addresses: VXLAN carries no
    authentication, so frames from anywhere else are dropped before they reach a bridge."""

    def __init__(self, port: int, owner: str = "") -> None:
        self.port = port
        tag = hashlib.sha256(owner.encode()).hexdigest()[:8]
        self.prefix = f"crucible-g-{tag}-"
        self.guard_table = f"crucible_cluster_port_{tag}"
        self._nets: dict[str, _Net] = {}
        self._lock = threading.Lock()
        if owner:
            self.remove_stale()

    def _guard(self) -> None:
        """Bring the host's port guard in line with the networks (hold the lock)."""
        if not self._nets:
            subprocess.run(
                ["nft", "delete", "table", "inet", self.guard_table],
                capture_output=True,
                check=False,
            )
            return
        peers: set[str] = set()
        for net in self._nets.values():
            peers |= net.peers
        done = subprocess.run(
            ["nft", "-f", "-"],
            input=port_guard_ruleset(self.guard_table, self.port, peers).encode(),
            capture_output=True,
            check=False,
            timeout=10,
        )
        if done.returncode != 0:
            raise GroupNetError(
                "could not guard the cluster port: "
                + done.stderr.decode("utf-8", "replace").strip()[-300:]
            )

    def remove_stale(self) -> list[str]:
        """Delete this agent's hub namespaces left by an earlier run; their names."""
        try:
            names = [n for n in os.listdir(_NETNS_DIR) if n.startswith(self.prefix)]
        except OSError:
            return []
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        with self._lock:
            if not self._nets:
                self._guard()
        return names

    @staticmethod
    def _key(plan: ClusterNetPlan) -> str:
        peers = ",".join(f"{p.address}:{p.port}" for p in plan.peers)
        return f"{plan.cluster_id}|{plan.vni}|{plan.subnet}|{peers}"

    def join(self, plan: ClusterNetPlan, user: str, pid: int) -> str:
        """Put the sandbox ``pid`` (held before its code runs; ``user`` names it) on its
        cluster's network at its address, building the network first if it is the first
        member here. Raises :class:`GroupNetError`."""
        key = self._key(plan)
        stale: list[GroupNetwork] = []
        with self._lock:
            net = self._nets.get(key)
            if net is None:
                # An earlier run of this cluster (placed otherwise: a cluster runs once at a
                # time) gives way: its VNI on this port, and its addresses, are the new run's.
                for old in [k for k in self._nets if k.split("|", 1)[0] == plan.cluster_id]:
                    stale.append(self._nets.pop(old).group)
                for group in stale:
                    with contextlib.suppress(Exception):
                        group.close()
                group = GroupNetwork(
                    ipaddress.IPv4Network(plan.subnet),
                    plan.port_lo,
                    plan.port_hi,
                    hub=self.prefix + uuid.uuid4().hex[:10],
                )
                group.create()
                try:
                    peers = [(_ip_of(p.address), p.port) for p in plan.peers]
                    net = self._nets[key] = _Net(group, peers=frozenset(a for a, _ in peers))
                    self._guard()  # before the link can carry anything
                    group.link_peers(plan.vni, self.port, peers)
                except BaseException:
                    self._nets.pop(key, None)
                    group.close()
                    self._guard()
                    raise
            net.users.add(user)
        return net.group.join(pid, plan.address)

    def leave(self, user: str) -> None:
        """``user``'s sandbox ended: remove every network it was the last member of."""
        gone: list[GroupNetwork] = []
        with self._lock:
            for key, net in list(self._nets.items()):
                net.users.discard(user)
                if not net.users:
                    gone.append(net.group)
                    del self._nets[key]
            if gone:
                with contextlib.suppress(Exception):
                    self._guard()
        for group in gone:
            with contextlib.suppress(Exception):
                group.close()

    def close(self) -> None:
        with self._lock:
            nets, self._nets = list(self._nets.values()), {}
            with contextlib.suppress(Exception):
                self._guard()
        for net in nets:
            with contextlib.suppress(Exception):
                net.group.close()
