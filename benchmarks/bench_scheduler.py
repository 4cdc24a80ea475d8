"""The live scheduler's core: containers placed per second by one ``plan()`` at fleet scale.

``plan()`` (core/scheduling.py) places every container the market does not lease through the
indexed placement engine (core/host_index.py over core/placement.py). This times one plan of
``--functions`` functions, each wanting one container, on ``--hosts`` hosts (seeded: 16-96
cores, 64-256 GiB, some of it already used), for CPU-only functions and for GPU functions
placed without a market (8 A100s per host, 1, 2 or 4 per container), and for the same GPU
functions leased through the market (kind ``market``: the scheduler's GPU lease path,
core/leasing.py, as the server's MarketPlacer calls it, on-demand at the hosts' prices; the
market is built before the clock starts). Placements/s = containers placed / the plan's wall
time (which includes building the engine's views, the autoscaler and the feasibility
checks). Prints a table and writes ``benchmarks/results/bench_scheduler.json``::

    .venv/bin/python benchmarks/bench_scheduler.py                  # 1,000 and 10,000 hosts
    .venv/bin/python benchmarks/bench_scheduler.py --hosts 25000 --functions 5000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from crucible.core.leasing import choice_runs, lease_on_hosts  # noqa: E402
from crucible.core.market import (  # noqa: E402
    HostSpec,
    LeaseGranted,
    LeaseRequest,
    Market,
    Offer,
    Prefer,
)
from crucible.core.scheduling import (  # noqa: E402
    FunctionDemand,
    GpuChoice,
    GpuPlacer,
    HostCapacity,
    LeaseTerms,
    Policy,
    StartContainer,
    plan,
)


def fleet(n: int, gpus: bool, rnd: random.Random) -> list[HostCapacity]:
    return [
        HostCapacity(
            id=f"ho-{i:06d}",
            cpu=float(rnd.choice([16, 32, 64, 96])),
            memory_mib=rnd.choice([65_536, 131_072, 262_144]),
            gpus=tuple((j, "A100") for j in range(8 if gpus else 0)),
            used_cpu=float(rnd.randint(0, 12)),
            used_memory_mib=rnd.randint(0, 32_768),
        )
        for i in range(n)
    ]


def demands(n: int, gpus: bool, rnd: random.Random) -> list[FunctionDemand]:
    return [
        FunctionDemand(
            id=f"fn-{k:06d}",
            cpu=rnd.choice([0.5, 1.0, 2.0, 4.0]),
            memory_mib=rnd.choice([512, 2048, 8192]),
            gpus=(GpuChoice("A100", rnd.choice([1, 2, 4])),) if gpus else (),
            queued=1,
            running=0,
            oldest_queued_ms=0,
            oldest_running_started_ms=None,
            avg_exec_ms=None,
            containers=(),
            max_containers=1,
            scaledown_window_ms=60_000,
        )
        for k in range(n)
    ]


def market_placer(fl: list[HostCapacity], rnd: random.Random, now_ms: int) -> GpuPlacer:
    """A market over ``fl`` (every host's GPUs offered at a random price) and the scheduler's
    GPU placer over it, as the server's MarketPlacer: one lease per container through
    core/leasing.py, hosts short of CPU or memory avoided."""
    market = Market()
    for h in fl:
        market.add_host(HostSpec(h.id, "r", gpus=h.gpus))
        price = rnd.randrange(1_000_000, 2_000_000, 10_000)
        market.set_offer(h.id, "A100", Offer(price, price // 2, price))
    by_id = {h.id: h for h in fl}

    def place(fn: FunctionDemand, hosts_now: list[HostCapacity]) -> StartContainer | None:
        for models, count in choice_runs(fn.gpus, Prefer.CHEAPEST):
            cid = f"ct-{fn.id}"
            got = lease_on_hosts(
                market,
                LeaseRequest(account=fn.id, models=models, count=count, lease_id=cid),
                now_ms,
                hosts=by_id,
                cpu=fn.cpu,
                memory_mib=fn.memory_mib,
            )
            if isinstance(got, LeaseGranted):
                lease = got.leases[0]
                return StartContainer(
                    fn.id,
                    lease.host_id,
                    fn.cpu,
                    fn.memory_mib,
                    lease.device_type,
                    lease.devices,
                    LeaseTerms(
                        cid,
                        lease.tier.value,
                        lease.price_micros_per_device_hour,
                        lease.rate_micros_per_hour,
                        lease.reservation_id,
                        lease.start_ms,
                    ),
                )
        return None

    return place


def run(hosts: int, functions: int, kind: str, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    gpus = kind != "cpu"
    fl, fns = fleet(hosts, gpus, rnd), demands(functions, gpus, rnd)
    placer = market_placer(fl, rnd, 1_000) if kind == "market" else None
    t = time.perf_counter()
    p = plan(1_000, fns, fl, Policy(), gpu_placer=placer)
    wall = time.perf_counter() - t
    return {
        "hosts": hosts,
        "kind": kind,
        "functions": functions,
        "placed": len(p.start),
        "plan_s": round(wall, 3),
        "placements_per_s": round(len(p.start) / wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", default="1000,10000", help="fleet sizes, comma-separated")
    ap.add_argument("--functions", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", default="cpu,gpu,market", help="which plans to time")
    ap.add_argument("--name", default="bench_scheduler")
    args = ap.parse_args()
    rows = [
        run(int(h), args.functions, kind, args.seed)
        for kind in args.kinds.split(",")
        for h in args.hosts.split(",")
    ]
    print("hosts | kind | functions | placed | plan s | placements/s")
    for r in rows:
        print(
            f"{r['hosts']:,} | {r['kind']} | {r['functions']:,} | {r['placed']:,} | "
            f"{r['plan_s']} | {r['placements_per_s']:,}"
        )
    out = {
        "benchmark": "scheduler",
        "seed": args.seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    path = REPO / "benchmarks" / "results" / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
