"""Filtered network egress, through the real agent, bwrap, slirp4netns and nftables.

The test builds its own network: a network namespace joined to this host by a veth pair, with
TEST-NET-2 addresses (198.51.100.2 and .3) serving TCP, and 169.254.169.254 on a dummy
interface (or its loopback, where the kernel has no dummy interfaces) behind it, routed
through the veth, so a sandbox that reached the "metadata service" would get an answer. On
the host: a server on 127.0.0.1 and one on every address (stand-ins for the agent's and the
server's ports). Nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import app_egress as e
import pytest

from harness import Exchange

FAR_SERVER = r"""
import socket, sys, threading
def serve(s, name):
    while True:
        c, _ = s.accept(); c.sendall(name.encode() + b"\n"); c.close()
# Every socket listens before "ready" is printed: the test connects as soon as it reads it.
for addr, port, name in [
    ("198.51.100.2", 8080, "far"), ("198.51.100.2", 9090, "far-other-port"),
    ("198.51.100.3", 8080, "not-allowed"), ("169.254.169.254", 80, "metadata"),
]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(16)
    threading.Thread(target=serve, args=(s, name), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _skip_unless_capable() -> None:
    if os.geteuid() != 0:
        pytest.skip("egress tests need root (network namespaces, the agent's filter)")
    missing = [t for t in ("ip", "slirp4netns", "nft", "nsenter", "bwrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"egress tests need {', '.join(missing)} (scripts/setup dev installs them)")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun here: slirp4netns cannot create the sandbox's interface")
    probe = f"crxp{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {done.stderr.strip()}")
    try:
        nft = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe"],
            capture_output=True,
            text=True,
        )
        if nft.returncode != 0:
            pytest.skip(f"nftables does not work in this kernel: {nft.stderr.strip()}")
    finally:
        _run("ip", "netns", "del", probe)


@pytest.fixture(scope="module")
def far_network() -> Iterator[None]:
    """198.51.100.2/.3 (and 169.254.169.254 behind them) in a namespace of their own."""
    _skip_unless_capable()
    tag = uuid.uuid4().hex[:6]
    ns, host_if, far_if = f"crx{tag}", f"crxh{tag}", f"crxf{tag}"
    _run("ip", "netns", "add", ns)
    server = None
    try:
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", far_if)
        _run("ip", "link", "set", far_if, "netns", ns)
        _run("ip", "addr", "add", "198.51.100.1/24", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        inside = ["ip", "netns", "exec", ns]
        _run(*inside, "ip", "addr", "add", "198.51.100.2/24", "dev", far_if)
        _run(*inside, "ip", "addr", "add", "198.51.100.3/24", "dev", far_if)
        _run(*inside, "ip", "link", "set", far_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        # On a dummy interface where the kernel has them, else on the namespace's loopback.
        dummy = subprocess.run(
            [*inside, "ip", "link", "add", "meta0", "type", "dummy"], capture_output=True
        )
        meta_dev = "meta0" if dummy.returncode == 0 else "lo"
        _run(*inside, "ip", "addr", "add", "169.254.169.254/32", "dev", meta_dev)
        _run(*inside, "ip", "link", "set", meta_dev, "up")
        _run("ip", "route", "add", "169.254.169.254/32", "via", "198.51.100.2", "dev", host_if)
        server = subprocess.Popen(
            [*inside, sys.executable, "-c", FAR_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # The host itself reaches all of them: only the sandbox's filter stands in the way.
        for host, port in [("198.51.100.2", 8080), ("198.51.100.3", 8080), ("169.254.169.254", 80)]:
            socket.create_connection((host, port), timeout=3).close()
        yield
    finally:
        if server is not None:
            server.kill()
            server.communicate()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class _Banner:
    """A TCP server that greets every connection with its name."""

    def __init__(self, addr: str, name: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((addr, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.name = name
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.sendall(self.name.encode() + b"\n")
            c.close()


@pytest.fixture(scope="module")
def host_ports() -> Iterator[dict[str, int]]:
    loopback = _Banner("127.0.0.1", "host-loopback")
    anywhere = _Banner("0.0.0.0", "host-any-address")
    yield {"loopback": loopback.port, "any": anywhere.port}
    loopback.sock.close()
    anywhere.sock.close()


@pytest.fixture(scope="module")
def egress_ok(far_network: None, sandboxed: Exchange) -> dict[str, Any]:
    info = sandboxed.host("host-a")
    assert info is not None
    report = info["isolation"]
    assert report["egress_filter"], f"this host should filter egress: {report['problems']}"
    return report


@pytest.fixture(scope="module")
def apps(egress_ok: dict[str, Any], tenant: Any) -> Iterator[None]:
    with e.app.run(client=tenant):
        yield


def _forbidden(sandboxed: Exchange, ports: dict[str, int]) -> list[str]:
    """Targets no sandbox may reach, whatever it asked for."""
    return [
        f"127.0.0.1:{ports['loopback']}",  # its own loopback: nothing listens there
        f"10.0.2.2:{ports['loopback']}",  # slirp's gateway, which would be the host's loopback
        f"10.0.2.2:{sandboxed.port}",
        f"198.51.100.1:{ports['any']}",  # the host's own address (the veth's host side)
        f"198.51.100.1:{sandboxed.port}",  # the server's port on a host address
        "169.254.169.254:80",  # link-local metadata (it answers the host)
    ]


def test_an_allowlist_reaches_its_targets_and_nothing_else(
    apps: None, sandboxed: Exchange, host_ports: dict[str, int]
) -> None:
    forbidden = _forbidden(sandboxed, host_ports)
    seen = e.allowlisted.remote([e.ALLOWED, "198.51.100.2:9090", "198.51.100.3:8080", *forbidden])
    assert seen[e.ALLOWED] == "connected:far"
    for target in ["198.51.100.2:9090", "198.51.100.3:8080", *forbidden]:
        assert not seen[target].startswith("connected"), f"reached {target}: {seen}"


def test_network_true_reaches_public_addresses_but_never_the_host_or_metadata(
    apps: None, sandboxed: Exchange, host_ports: dict[str, int]
) -> None:
    forbidden = _forbidden(sandboxed, host_ports)
    seen = e.public.remote(["198.51.100.2:9090", "198.51.100.3:8080", *forbidden])
    assert seen["198.51.100.2:9090"] == "connected:far-other-port"
    assert seen["198.51.100.3:8080"] == "connected:not-allowed"
    for target in forbidden:
        assert not seen[target].startswith("connected"), f"reached {target}: {seen}"


def test_no_network_asked_reaches_nothing(
    apps: None, sandboxed: Exchange, host_ports: dict[str, int]
) -> None:
    seen = e.offline.remote([e.ALLOWED, *_forbidden(sandboxed, host_ports)])
    assert all(v in {"ENETUNREACH", "ECONNREFUSED", "EHOSTUNREACH"} for v in seen.values()), seen


def test_the_host_owners_allowlist_is_filtered_too(
    egress_ok: dict[str, Any], sandboxed: Exchange, host_ports: dict[str, int]
) -> None:
    """Only the owner's network=True is the host's own network; an allowlist is an allowlist
    whoever asks."""
    token = sandboxed.admin.post("/v1/tokens", {"scope": "user", "name": "owner"})["token"]
    owner = sandboxed.client(token)
    try:
        with e.owners.run(client=owner):
            forbidden = _forbidden(sandboxed, host_ports)
            seen = e.owner_allowlisted.remote([e.ALLOWED, *forbidden])
    finally:
        owner.close()
    assert seen[e.ALLOWED] == "connected:far"
    for target in forbidden:
        assert not seen[target].startswith("connected"), f"reached {target}: {seen}"
