"""Cluster networks: TCP throughput and round trip between two members, side by side.

Three paths, each between two network namespaces standing in for member sandboxes (a
process in each, joined exactly as the agent joins a sandbox: :mod:`crucible.agent.groupnet`,
nftables filter included):

* **same host**: both members on one group's bridge;
* **two hosts**: each member on its own bridge (as two agents build them), the bridges linked
  by VXLAN over this machine's loopback (each with its own UDP port);
* **direct loopback**: the two processes on the host's own loopback, no group network.

For each: ``--mib`` MiB sent one way (best of 3) and the p50/p99 of ``--n`` 1-byte round
trips on one connection. Needs root, iproute2 and nftables. Prints a table and writes
``benchmarks/results/bench_cluster_net.json``::

    sudo .venv/bin/python benchmarks/bench_cluster_net.py            # ~20 s
    sudo .venv/bin/python benchmarks/bench_cluster_net.py --mib 1024 --n 5000
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from crucible.agent.clusternet import (
    cluster_net_tools_problem,
    free_udp_port,
    wait_netns_entered,
)
from crucible.agent.groupnet import GroupNetwork

PORT = 7100
# The member's server: ``bulk`` drains what it gets and answers its length; ``echo`` echoes.
SERVER = r"""
import socket, sys
srv = socket.create_server(("", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = conn.recv(4)
        if kind == b"bulk":
            total = 0
            while chunk := conn.recv(1 << 20):
                total += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            conn.sendall(str(total).encode())
        else:
            while b := conn.recv(1):
                conn.sendall(b)
"""
# The other member: connects, measures, prints JSON.
CLIENT = r"""
import json, socket, sys, time
host, port, mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def connect():
    deadline = time.monotonic() + 10
    while True:
        try:
            c = socket.create_connection((host, port), timeout=10)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return c
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
best = 0.0
block = b"x" * (1 << 20)
for _ in range(3):
    with connect() as c:
        c.sendall(b"bulk")
        t0 = time.perf_counter()
        for _ in range(mib):
            c.sendall(block)
        c.sendall(b"\n")
        c.recv(64)
        best = max(best, mib / (time.perf_counter() - t0))
rtts = []
with connect() as c:
    c.sendall(b"echo")
    for _ in range(n):
        t0 = time.perf_counter()
        c.sendall(b"p")
        c.recv(1)
        rtts.append((time.perf_counter() - t0) * 1e6)
rtts.sort()
print(json.dumps({"mib_s": best, "rtt_p50_us": rtts[len(rtts) // 2],
                  "rtt_p99_us": rtts[int(len(rtts) * 0.99)]}))
"""


class Namespace:
    """A network namespace with a process in it (stands in for a member sandbox)."""

    def __init__(self) -> None:
        self.name = f"crucible-bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def run(self, code: str, *args: str) -> subprocess.Popen[str]:
        argv = ["ip", "netns", "exec", self.name, sys.executable, "-c", code, *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def measure(
    setup: Callable[[int, int], tuple[str, str]] | None, mib: int, n: int
) -> dict[str, float]:
    """Start the server and the client (in namespaces joined by ``setup(server pid, client
    pid)`` → (server address, client address); on the host when None); their figures."""
    if setup is None:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(PORT)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        try:
            out = subprocess.run(
                [sys.executable, "-c", CLIENT, "127.0.0.1", str(PORT), str(mib), str(n)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            server.kill()
            server.wait()
        return dict(json.loads(out))
    a, b = Namespace(), Namespace()
    procs: list[subprocess.Popen[str]] = []
    try:
        server = a.run(SERVER, str(PORT))
        procs.append(server)
        holder = b.run("import time; time.sleep(600)")
        procs.append(holder)
        wait_netns_entered(server.pid)
        wait_netns_entered(holder.pid)
        addr, _ = setup(server.pid, holder.pid)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = b.run(CLIENT, addr, str(PORT), str(mib), str(n))
        procs.append(client)
        out, _ = client.communicate(timeout=600)
        return dict(json.loads(out))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        a.close()
        b.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    problem = cluster_net_tools_problem()
    if problem is not None:
        print(f"cannot build cluster networks here: {problem}")
        return 1
    subnet = ipaddress.IPv4Network("10.202.1.0/24")
    nets: list[GroupNetwork] = []

    def same_host(server: int, client: int) -> tuple[str, str]:
        g = GroupNetwork(subnet, 1024, 65535)
        nets.append(g)
        g.create()
        return g.join(server, "10.202.1.2"), g.join(client, "10.202.1.3")

    def two_hosts(server: int, client: int) -> tuple[str, str]:
        one, two = GroupNetwork(subnet, 1024, 65535), GroupNetwork(subnet, 1024, 65535)
        nets.extend((one, two))
        p1, p2 = free_udp_port(), free_udp_port()
        for g in (one, two):
            g.create()
        one.link_peers(4100, p1, [("127.0.0.1", p2)])
        two.link_peers(4100, p2, [("127.0.0.1", p1)])
        return one.join(server, "10.202.1.2"), two.join(client, "10.202.1.3")

    rows: dict[str, dict[str, float]] = {}
    try:
        for name, setup in (
            ("same host (bridge)", same_host),
            ("two hosts (VXLAN over loopback)", two_hosts),
            ("direct loopback (no group network)", None),
        ):
            rows[name] = measure(setup, args.mib, args.n)
            for g in nets:
                g.close()
            nets.clear()
    finally:
        for g in nets:
            g.close()
    print(f"{'path':38} {'MiB/s':>9} {'rtt p50 us':>11} {'rtt p99 us':>11}")
    for name, r in rows.items():
        print(f"{name:38} {r['mib_s']:9.0f} {r['rtt_p50_us']:11.1f} {r['rtt_p99_us']:11.1f}")
    out = Path(__file__).parent / "results" / "bench_cluster_net.json"
    out.write_text(
        json.dumps(
            {"mib": args.mib, "n": args.n, "cpus": os.cpu_count(), "at": time.time(), **rows},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
