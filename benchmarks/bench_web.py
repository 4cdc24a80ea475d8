"""A web endpoint through the exchange's gateway vs the same FastAPI app under uvicorn,
side by side in one run.

The endpoint (``_bench_app.hello``, ``@crucible.fastapi_endpoint``, public, one warm
container) is deployed on a throwaway exchange; the baseline serves the same handler with
uvicorn directly. The gateway is measured twice: with its fast path (a request relayed in
memory to the warm container on its web channel, server/web_channel.py) and with every
request a durable call (``CRUCIBLE_WEB_RELAY=false``, the gateway before the fast path).
Each is measured with one client (sequential requests: latency) and with 8 concurrent
clients (throughput). The fast path is measured once more, at one client, with the container
a plain process (``CRUCIBLE_RUNTIME=process``) instead of a sandbox: the difference is what
the sandbox costs a request on this machine. Prints a table with the overhead ratio and writes
``benchmarks/results/bench_web.json``::

    .venv/bin/python benchmarks/bench_web.py              # 1,000 requests per measurement
    .venv/bin/python benchmarks/bench_web.py --requests 200
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _bench_app  # noqa: E402
from _exchange import CpuMeter, Exchange, machine_info, print_table  # noqa: E402
from bench_market import percentile  # noqa: E402

from crucible.testing import free_port, wait_for  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def measure(url: str, n: int, concurrency: int) -> dict[str, Any]:
    lat: list[float] = []

    def worker(count: int) -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(count):
                t0 = time.perf_counter()
                r = http.get(url, params={"name": "bench"})
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200 and r.json() == {"hello": "bench"}, r.text

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker, n // concurrency) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    return {
        "requests": len(lat),
        "concurrency": concurrency,
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_web.json")
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}

    port = free_port()
    uvicorn = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "_bench_app:plain_fastapi",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO / "benchmarks",
    )
    try:
        direct = f"http://127.0.0.1:{port}/"
        wait_for(lambda: _up(direct), 30, "uvicorn")
        measure(direct, 100, 1)  # warm-up
        results["uvicorn, 1 client"] = measure(direct, args.requests, 1)
        results["uvicorn, 8 clients"] = measure(direct, args.requests, 8)
    finally:
        uvicorn.terminate()
        uvicorn.wait()

    setups = (
        ("gateway", {"CRUCIBLE_WEB_RELAY": "true"}, (1, 8)),
        ("gateway durable", {"CRUCIBLE_WEB_RELAY": "false"}, (1, 8)),
        # The fast path with the container as a plain process instead of a sandbox: what
        # the sandbox (namespaces, seccomp, the relay socket) adds on this machine.
        (
            "gateway, no sandbox",
            {"CRUCIBLE_WEB_RELAY": "true", "CRUCIBLE_RUNTIME": "process"},
            (1,),
        ),
    )
    for setup, extra, client_counts in setups:
        env = {"CRUCIBLE_SCALEDOWN_WINDOW_S": "300", **extra}
        with Exchange(env=env) as ex:
            client = ex.client()
            name = client.get("/v1/accounts/me")["name"]
            _bench_app.web_app.deploy(client=client)
            url = f"{ex.url}/web/{name}/bench-web/hello/"
            wait_for(functools.partial(_up, url), 60, "the endpoint")
            measure(url, 100, 1)  # warm-up
            for clients in client_counts:
                label = f"{setup}, {clients} client{'s' if clients > 1 else ''}"
                with CpuMeter(ex) as cpu:
                    results[label] = measure(url, args.requests, clients)
                n = results[label]["requests"]
                # CPU per request by process: steadier than latency on a shared machine.
                results[label]["cpu_ms_per_request"] = {
                    role: round(cpu.result.get(role, 0.0) * 1000 / n, 2)
                    for role in ("server", "agent")
                }
            client.close()

    rows = []
    for label, r in results.items():
        base = results["uvicorn, " + label.rsplit(", ", 1)[1]]
        rows.append(
            (
                label,
                r["requests"],
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                f"{base['rps'] / r['rps']:.1f}x" if label.startswith("gateway") else "",
                f"{r['p50_ms'] / base['p50_ms']:.1f}x" if label.startswith("gateway") else "",
                " / ".join(f"{v:g}" for v in r.get("cpu_ms_per_request", {}).values()),
            )
        )
    print_table(
        "A FastAPI endpoint: through the Crucible gateway vs uvicorn directly (loopback)",
        [
            "setup",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "overhead (rps ratio)",
            "p50 ratio",
            "CPU ms/request: server / agent",
        ],
        rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"benchmark": "web endpoint", "results": results, "machine": machine_info()}, indent=2
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
