"""The live scheduler's core: containers placed per second by one ``plan()`` at fleet scale.

``plan()`` (core/scheduling.py) places every container the market does not lease through the
indexed placement engine (core/host_index.py over core/placement.py). This times one plan of
``--functions`` functions, each wanting one container, on ``--hosts`` hosts (seeded: 16-96
cores, 64-256 GiB, some of it already used), for CPU-only functions and for GPU functions
placed without a market (8 A100s per host, 1, 2 or 4 per container). Placements/s = containers
placed / the plan's wall time (which includes building the engine's views, the autoscaler and
the feasibility checks). Prints a table and writes ``benchmarks/results/bench_scheduler.json``::

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

from crucible.core.scheduling import (  # noqa: E402
    FunctionDemand,
    GpuChoice,
    HostCapacity,
    Policy,
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


def run(hosts: int, functions: int, gpus: bool, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    fl, fns = fleet(hosts, gpus, rnd), demands(functions, gpus, rnd)
    t = time.perf_counter()
    p = plan(1_000, fns, fl, Policy())
    wall = time.perf_counter() - t
    return {
        "hosts": hosts,
        "kind": "gpu" if gpus else "cpu",
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
    ap.add_argument("--name", default="bench_scheduler")
    args = ap.parse_args()
    rows = [
        run(int(h), args.functions, gpus, args.seed)
        for gpus in (False, True)
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
