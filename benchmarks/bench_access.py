"""Access sessions: exec round trip and tunnel throughput, side by side with the direct path.

One exchange (server and one agent, subprocesses on loopback) and one running container
that serves a TCP echo port, in one run:

* **exec round trip**: ``crucible container exec ID -- true`` through the relay (client
  WebSocket → server → the agent's WebSocket dialled back → the process in the container →
  its exit code back), against starting ``true`` locally;
* **tunnel connect**: a port-forward connection opened and one small message echoed, against a
  direct loopback connection to an echo server on this machine;
* **tunnel throughput**: ``--mib`` MiB sent through a forwarded port and echoed back (so every
  byte crosses the relay twice), against the same through a direct loopback connection.

Prints a table and writes ``benchmarks/results/bench_access.json``::

    .venv/bin/python benchmarks/bench_access.py                 # bwrap where possible
    .venv/bin/python benchmarks/bench_access.py --runtime process --mib 256
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _access_app as aapp  # noqa: E402
from _exchange import (  # noqa: E402
    Exchange,
    machine_info,
    print_table,
    summarize_ms,
    write_results,
)

from crucible.sdk import _tunnels  # noqa: E402
from crucible.sdk._client import Client  # noqa: E402
from crucible.testing import free_port, wait_for  # noqa: E402


def _echo_roundtrip(port: int, payload: bytes) -> float:
    """Seconds to send ``payload`` to an echo server at ``port`` and read it all back."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sender = threading.Thread(target=conn.sendall, args=(payload,))
        sender.start()
        got = 0
        while got < len(payload):
            chunk = conn.recv(1 << 16)
            if not chunk:
                raise RuntimeError(f"connection closed after {got} of {len(payload)} bytes")
            got += len(chunk)
        sender.join()
    return time.perf_counter() - started


def _mbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / (1 << 20) / seconds, 1) if seconds > 0 else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="auto", choices=["auto", "bwrap", "process"])
    parser.add_argument("--mib", type=int, default=64, help="Bytes echoed per throughput run.")
    parser.add_argument("--n", type=int, default=30, help="Samples of each latency.")
    parser.add_argument("--repeat", type=int, default=3, help="Throughput runs of each path.")
    args = parser.parse_args()

    env = {"CRUCIBLE_RUNTIME": args.runtime}
    payload = bytes(range(256)) * (args.mib * 4096)
    port = free_port()
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    with Exchange(env=env) as ex:
        token = ex.owner_token("bench-access")
        client = Client(ex.url, token)
        with aapp.app.run(client=client):
            call = aapp.hold.spawn(3600, port)

            def container() -> str | None:
                info = client.transport.get(f"/v1/calls/{call.object_id}/timeline")
                return info["container_id"] if info["state"] == "running" else None

            cid = wait_for(container, timeout_s=120, what="the container to run")
            runtime = ex.host("bench-host")["isolation"]["runtime"]  # type: ignore[index]

            # exec round trip vs a local process start
            relay, local = [], []
            for _ in range(args.n):
                started = time.perf_counter()
                code = _tunnels.exec_command(
                    ex.url, token, cid, ["true"], stdout=io.BytesIO(), stderr=io.BytesIO()
                )
                relay.append(time.perf_counter() - started)
                assert code == 0
                started = time.perf_counter()
                subprocess.run(["true"], check=True)
                local.append(time.perf_counter() - started)

            # the direct path: the same echo server, on this machine
            direct_port = free_port()
            threading.Thread(target=aapp.serve_echo, args=(direct_port,), daemon=True).start()
            wait_for(lambda: _can_connect(direct_port), timeout_s=10, what="local echo")

            stop = threading.Event()
            bound: list[int] = []
            ready = threading.Event()

            def listening(p: int) -> None:
                bound.append(p)
                ready.set()

            fwd = threading.Thread(
                target=_tunnels.port_forward,
                args=(ex.url, token, cid, 0, port),
                kwargs={"on_listening": listening, "stop": stop},
                daemon=True,
            )
            fwd.start()
            ready.wait(10)
            small = b"ping" * 16
            connect_tunnel = [_echo_roundtrip(bound[0], small) for _ in range(args.n)]
            connect_direct = [_echo_roundtrip(direct_port, small) for _ in range(args.n)]
            tunnel_s = [_echo_roundtrip(bound[0], payload) for _ in range(args.repeat)]
            direct_s = [_echo_roundtrip(direct_port, payload) for _ in range(args.repeat)]
            stop.set()
            fwd.join(5)
            client.transport.post(f"/v1/calls/{call.object_id}/cancel", {})
        client.close()

    nbytes = 2 * len(payload)  # each byte crosses twice (there and echoed back)
    results.update(
        runtime=runtime,
        exec_relay=summarize_ms(relay),
        exec_local_process=summarize_ms(local),
        tunnel_connect_echo=summarize_ms(connect_tunnel),
        direct_connect_echo=summarize_ms(connect_direct),
        tunnel_mb_per_s=[_mbps(nbytes, s) for s in tunnel_s],
        direct_mb_per_s=[_mbps(nbytes, s) for s in direct_s],
    )
    best_tunnel = max(results["tunnel_mb_per_s"])
    best_direct = max(results["direct_mb_per_s"])
    results["tunnel_vs_direct"] = round(best_tunnel / best_direct, 4)
    print_table(
        f"Access sessions ({runtime} runtime, loopback; {args.n} samples, "
        f"{args.mib} MiB echoed x{args.repeat})",
        ["what", "through the relay", "direct", "unit"],
        [
            [
                "exec `true` round trip p50 / p90",
                f"{results['exec_relay']['p50_ms']} / {results['exec_relay']['p90_ms']}",
                f"{results['exec_local_process']['p50_ms']} / "
                f"{results['exec_local_process']['p90_ms']}",
                "ms",
            ],
            [
                "connect + 64 B echo p50",
                results["tunnel_connect_echo"]["p50_ms"],
                results["direct_connect_echo"]["p50_ms"],
                "ms",
            ],
            ["echo throughput (best)", best_tunnel, best_direct, "MB/s"],
        ],
    )
    path = write_results("bench_access", results)
    print(f"\nresults: {path}")
    return 0


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
