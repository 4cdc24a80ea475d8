"""A group's private network between real bwrap sandboxes (agent/groupnet.py): members reach
each other on the group's ports only; another group, the host and other ports do not."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from crucible.agent import groupnet
from crucible.agent.egress import wait_child_pid
from crucible.agent.groupnet import GroupNetwork, member_ruleset

# Serves 7000 (a group port) and 9000 (not one), then tries each target of argv.
MEMBER = r"""
import errno, json, socket, sys, threading, time
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8)
    while True:
        c, _ = s.accept(); c.sendall(b"hi"); c.close()
for port in (7000, 9000):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.5) as c:
                out[target] = "connected:" + c.recv(8).decode()
            break
        except OSError as exc:
            out[target] = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            if time.monotonic() > deadline or out[target] != "ECONNREFUSED":
                break
            time.sleep(0.1)
print(json.dumps(out), flush=True)
time.sleep(1)  # let the others finish trying this member's ports
"""


def _skip_unless_capable() -> None:
    if os.geteuid() != 0:
        pytest.skip("group networks need root (network namespaces, veth pairs, nftables)")
    missing = [t for t in ("ip", "nft", "nsenter", "bwrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"group networks need {', '.join(missing)} (scripts/setup dev installs them)")


class Member:
    """A bwrap sandbox with its own network namespace, held before it runs MEMBER."""

    def __init__(self, targets: list[str]) -> None:
        info_r, info_w = os.pipe()
        self.block_r, self.block_w = os.pipe()
        argv = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--die-with-parent"]
        argv += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        argv += ["--info-fd", str(info_w), "--block-fd", str(self.block_r)]
        argv += ["--", sys.executable, "-c", MEMBER, *targets]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, pass_fds=(info_w, self.block_r)
        )
        os.close(info_w)
        os.close(self.block_r)
        try:
            self.pid = wait_child_pid(info_r)
        finally:
            os.close(info_r)

    def start(self) -> None:
        os.write(self.block_w, b"1")
        os.close(self.block_w)

    def result(self) -> dict[str, str]:
        out, _ = self.proc.communicate(timeout=30)
        return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.fixture
def groups() -> Iterator[tuple[GroupNetwork, GroupNetwork]]:
    _skip_unless_capable()
    one = GroupNetwork(ipaddress.IPv4Network("10.77.1.0/24"), 7000, 7010)
    two = GroupNetwork(ipaddress.IPv4Network("10.77.2.0/24"), 7000, 7010)
    one.create()
    two.create()
    try:
        yield one, two
    finally:
        one.close()
        two.close()


def test_members_reach_each_other_on_the_group_ports_only(
    groups: tuple[GroupNetwork, GroupNetwork],
) -> None:
    one, two = groups
    a = Member(["10.77.1.3:7000", "10.77.1.3:9000", "10.77.2.2:7000"])
    b = Member(["10.77.1.2:7000"])
    c = Member(["10.77.1.2:7000", "10.77.1.3:7000"])  # another group
    members = [a, b, c]
    try:
        assert one.join(a.pid) == "10.77.1.2"
        assert one.join(b.pid) == "10.77.1.3"
        assert two.join(c.pid) == "10.77.2.2"
        for m in members:
            m.start()
        seen_a, seen_b, seen_c = (m.result() for m in members)
    finally:
        for m in members:
            m.proc.kill()
            m.proc.wait()
    assert seen_a["10.77.1.3:7000"] == "connected:hi"
    assert seen_b["10.77.1.2:7000"] == "connected:hi"
    assert not seen_a["10.77.1.3:9000"].startswith("connected"), seen_a  # not a group port
    assert not seen_a["10.77.2.2:7000"].startswith("connected"), seen_a  # another group
    assert all(not v.startswith("connected") for v in seen_c.values()), seen_c
    # The host has no way into the group: no interface of it is on the bridge.
    probe = subprocess.run(
        ["ip", "route", "get", "10.77.1.2"], capture_output=True, text=True, check=False
    )
    assert "br0" not in probe.stdout and "cg0" not in probe.stdout


def test_the_member_ruleset_drops_everything_else_on_the_group_interface() -> None:
    rules = member_ruleset(ipaddress.IPv4Network("10.77.1.0/24"), 7000, 7010)
    assert 'iifname "cg0" ip saddr 10.77.1.0/24 meta l4proto { tcp, udp } th dport 7000-7010' in (
        rules
    )
    assert rules.count('"cg0" drop') == 2


def test_a_group_is_a_24_with_valid_ports() -> None:
    with pytest.raises(ValueError, match="/24"):
        GroupNetwork(ipaddress.IPv4Network("10.77.0.0/16"), 1, 2)
    with pytest.raises(ValueError, match="ports"):
        GroupNetwork(ipaddress.IPv4Network("10.77.1.0/24"), 9, 2)


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_groups_on_two_hosts_are_one_network_through_vxlan() -> None:
    """Two hubs (as two hosts' agents build them) linked by VXLAN over loopback, each with
    its own UDP port: their members reach each other at the addresses they were given. A
    third hub on the same subnet with another VNI hears nothing of them."""
    _skip_unless_capable()
    subnet = ipaddress.IPv4Network("10.78.1.0/24")
    here, there, other = (GroupNetwork(subnet, 7000, 7010) for _ in range(3))
    ports = [_free_udp_port() for _ in range(3)]
    for g in (here, there, other):
        g.create()
    members: list[Member] = []
    try:
        here.link_peers(4242, ports[0], [("127.0.0.1", ports[1])])
        there.link_peers(4242, ports[1], [("127.0.0.1", ports[0])])
        other.link_peers(4243, ports[2], [("127.0.0.1", ports[0]), ("127.0.0.1", ports[1])])
        a = Member(["10.78.1.5:7000", "10.78.1.5:9000"])
        b = Member(["10.78.1.2:7000"])
        c = Member(["10.78.1.2:7000", "10.78.1.5:7000"])
        members = [a, b, c]
        assert here.join(a.pid, "10.78.1.2") == "10.78.1.2"
        assert there.join(b.pid, "10.78.1.5") == "10.78.1.5"
        assert other.join(c.pid, "10.78.1.3") == "10.78.1.3"
        for m in members:
            m.start()
        seen_a, seen_b, seen_c = (m.result() for m in members)
    finally:
        for m in members:
            m.proc.kill()
            m.proc.wait()
        for g in (here, there, other):
            g.close()
    assert seen_a["10.78.1.5:7000"] == "connected:hi"
    assert seen_b["10.78.1.2:7000"] == "connected:hi"
    assert not seen_a["10.78.1.5:9000"].startswith("connected"), seen_a  # not a group port
    assert all(not v.startswith("connected") for v in seen_c.values()), seen_c
    # Closing the hubs removed their VXLAN devices too.
    left = subprocess.run(
        ["ip", "-d", "link", "show", "type", "vxlan"], capture_output=True, text=True, check=False
    )
    assert "vxlan id 4242 " not in left.stdout


def test_a_closed_groups_vni_is_free_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster stopped and started again on the same host builds its network with the same
    VNI and port right after the old one closed: closing deleted the VXLAN device itself, so
    the VNI is free when close() returns (no waiting for the kernel to free the namespace)."""
    _skip_unless_capable()
    monkeypatch.setattr(groupnet, "_VNI_FREED_WITHIN_S", 0.0)  # no retry: free, or fail
    subnet = ipaddress.IPv4Network("10.79.1.0/24")
    port = _free_udp_port()
    for _ in range(3):
        g = GroupNetwork(subnet, 7000, 7010)
        g.create()
        try:
            g.link_peers(4244, port, [("127.0.0.1", _free_udp_port())])
        finally:
            g.close()


def test_a_member_address_must_be_in_the_group() -> None:
    group = GroupNetwork(ipaddress.IPv4Network("10.77.1.0/24"), 7000, 7010)
    for bad in ("10.77.2.2", "10.77.1.0", "10.77.1.255"):
        with pytest.raises(ValueError, match="not a member address"):
            group.join(1, bad)


def test_an_agent_removes_the_hubs_its_killed_predecessor_left(tmp_path: object) -> None:
    _skip_unless_capable()
    from crucible.agent.clusternet import ClusterNetworks

    first = ClusterNetworks(_free_udp_port(), owner=f"/agent/{tmp_path}")
    left = GroupNetwork(ipaddress.IPv4Network("10.79.1.0/24"), 7000, 7010, hub=first.prefix + "x1")
    left.create()  # as if the agent had been killed with this network up
    other = GroupNetwork(ipaddress.IPv4Network("10.79.2.0/24"), 7000, 7010)  # another agent's
    other.create()
    try:
        again = ClusterNetworks(_free_udp_port(), owner=f"/agent/{tmp_path}")
        hubs = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert left.hub not in hubs and other.hub in hubs
        assert again.remove_stale() == []
    finally:
        left.close()
        other.close()


def test_the_cluster_port_takes_frames_only_from_the_clusters_hosts(tmp_path: object) -> None:
    """VXLAN has no authentication: while an agent has cluster networks, the host drops UDP
    to its cluster port from any address that is not one of their hosts'."""
    _skip_unless_capable()
    import re
    import socket

    from crucible.agent.clusternet import ClusterNetworks, wait_netns_entered
    from crucible.protocol.pods import ClusterNetPlan, ClusterPeer

    nets = ClusterNetworks(_free_udp_port(), owner=f"/agent/{tmp_path}")
    holder_ns = f"crucible-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", holder_ns], check=True)
    holder = subprocess.Popen(["ip", "netns", "exec", holder_ns, "sleep", "60"])
    plan = ClusterNetPlan(
        cluster_id="cl-guard",
        subnet="10.79.3.0/24",
        address="10.79.3.2",
        vni=4244,
        port_lo=1024,
        port_hi=65535,
        peers=[ClusterPeer(address="127.0.0.1", port=_free_udp_port())],
    )

    def dropped() -> int:
        table = subprocess.run(
            ["nft", "list", "table", "inet", nets.guard_table], capture_output=True, text=True
        ).stdout
        last = [line for line in table.splitlines() if "drop" in line][-1]
        found = re.search(r"packets (\d+)", last)
        return int(found.group(1)) if found else -1

    def send_from(source: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.sendto(b"\x08\x00\x00\x00\x00\x10\x94\x00" + b"\x00" * 60, ("127.0.0.1", nets.port))

    try:
        wait_netns_entered(holder.pid)
        assert nets.join(plan, "sandbox-1", holder.pid) == "10.79.3.2"
        before = dropped()
        send_from("127.0.0.1")  # a cluster host's address: let through
        assert dropped() == before
        send_from("127.0.0.2")  # anyone else: dropped
        assert dropped() == before + 1
        nets.leave("sandbox-1")  # the last network here: the guard goes with it
        gone = subprocess.run(
            ["nft", "list", "table", "inet", nets.guard_table], capture_output=True
        )
        assert gone.returncode != 0
    finally:
        holder.kill()
        holder.wait()
        nets.close()
        subprocess.run(["ip", "netns", "del", holder_ns], check=False)
