"""Placement decisions at fleet scale: the indexed core against a naive full scan.

Fleets: the openb node list (Alibaba GPU trace 2023) replicated to each of ``--gpus`` GPUs
(default 100,000 and 250,000: 24,688 and 61,720 nodes), spread over ``--sites`` sites (default
32), each site with its own region, price factor and carbon intensity, so the cost-first and
carbon-first policies have market data to rank by (prices: the reference $/GPU-hour below x a
site factor 0.8-1.2; carbon 20-620 gCO2/kWh; both assumptions). Workload: requests drawn
(seeded) from the openb default pod list.
Each event is an arrival; before it, while ``--live`` placements are running, a random
running placement is released (not timed), so the fleet stays busy and fragmented.

1. Fill: arrivals on the indexed cluster until ``--live`` placements run (timed as a whole).
2. Indexed: ``--n`` further events per policy, each ``place`` timed.
3. Naive: the same fill state copied into a full-scan cluster (``indexed=False``: every node
   checked and every feasible node scored), ``--naive-n`` events of the same stream.

Decisions/s = decisions / time spent in ``place``; latencies include refusals (nothing fits).
``x naive`` is the indexed decisions/s over the naive scan's on the same state and stream.
After the fill the loaded state is frozen out of the cyclic GC (``gc.freeze()``), as in
bench_market.py. Peak memory: the fleet state's allocation (tracemalloc, at build) and the
process's peak RSS after each fleet size. Prints a table and writes
``benchmarks/results/bench_placement.json``. Usage::

    .venv/bin/python benchmarks/bench_placement.py                 # 100,000 and 250,000 GPUs
    .venv/bin/python benchmarks/bench_placement.py --gpus 100000 --policies best-fit,fgd
    .venv/bin/python benchmarks/bench_placement.py --quick         # 10,000 GPUs, small counts
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The project's copy of the openb trace (shared/ beside the checkout; not in the product).
OPENB_TRACE = REPO.parent / "shared" / "data" / "traces" / "alibaba-openb-2023"
sys.path.insert(0, str(REPO / "src"))

from crucible.core.placement import (  # noqa: E402
    Cluster,
    NodeSpec,
    Placement,
    Request,
    make_policy,
)
from crucible.sim.trace import (  # noqa: E402
    gpu_count,
    load_nodes,
    load_pods,
    replicate,
    workload_classes,
)

# Reference on-demand $/GPU-hour by openb model (assumption: G1-G3 are undisclosed types).
PRICE_USD = {"A10": 0.75, "G2": 1.29, "G3": 1.10, "P100": 0.40, "T4": 0.35, "V100M16": 0.80,
             "V100M32": 0.90}  # fmt: skip


def with_sites(nodes: Sequence[NodeSpec], sites: int) -> list[NodeSpec]:
    """Node k at site k % sites: region, price (reference x 0.8-1.2) and carbon (20-620)."""
    out = []
    for k, n in enumerate(nodes):
        site = k % sites
        frac = site / max(1, sites - 1)
        price = (
            round(PRICE_USD.get(n.gpu_model, 0.5) * (0.8 + 0.4 * frac) * 1e6) if n.gpu_count else 0
        )
        carbon = 20 + round(600 * ((site * 7) % sites) / max(1, sites - 1))
        out.append(
            NodeSpec(n.id, n.cpu_milli, n.memory_mib, n.gpu_count, n.gpu_model,
                     f"site-{site:02d}", price, carbon)
        )  # fmt: skip
    return out


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q * len(s)))]


def run_events(
    c: Cluster,
    reqs: Sequence[Request],
    live: list[Placement],
    cap: int,
    rng: random.Random,
    n: int,
    lat_us: list[float] | None,
) -> int:
    """Run ``n`` arrival events; returns refusals. Appends per-decision latencies (µs)."""
    refused = 0
    clock = time.perf_counter_ns
    for _ in range(n):
        while len(live) >= cap:
            k = rng.randrange(len(live))
            live[k], live[-1] = live[-1], live[k]
            c.release(live.pop())
        req = reqs[rng.randrange(len(reqs))]
        t0 = clock()
        p = c.place(req)
        t1 = clock()
        if lat_us is not None:
            lat_us.append((t1 - t0) / 1000)
        if p is None:
            refused += 1
        else:
            live.append(p)
    return refused


def summary(name: str, lat: list[float], refused: int, extra: dict[str, Any]) -> dict[str, Any]:
    total_s = sum(lat) / 1e6
    return {
        "name": name,
        "decisions": len(lat),
        "refused": refused,
        "decisions_per_s": round(len(lat) / total_s, 1) if total_s else None,
        "p50_us": round(percentile(lat, 0.50), 1),
        "p99_us": round(percentile(lat, 0.99), 1),
        "p999_us": round(percentile(lat, 0.999), 1),
        "max_us": round(max(lat), 1),
        **extra,
    }


def bench_size(args: argparse.Namespace, gpus: int, reqs: list[Request]) -> dict[str, Any]:
    nodes = with_sites(replicate(load_nodes(args.trace), gpus), args.sites)
    classes = workload_classes(reqs, max_classes=args.fgd_classes)
    mean_gpu = sum(r.gpu_demand_milli for r in reqs) / len(reqs) / 1000
    cap = int(args.util * gpu_count(nodes) / mean_gpu)
    print(
        f"fleet: {len(nodes):,} nodes, {gpu_count(nodes):,} GPUs, {args.sites} sites; "
        f"{len(reqs):,} openb requests (mean {mean_gpu:.3f} GPU); live set {cap:,} placements",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for name in args.policies.split(","):
        tracemalloc.start()
        # fgd weighs fragmentation by the trace's own task-class distribution
        kw: dict[str, Any] = {"workload": classes} if name == "fgd" else {}
        c = Cluster.from_nodes(nodes, make_policy(name, **kw))
        state_mib = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        rng = random.Random(args.seed)
        live: list[Placement] = []
        t0 = time.perf_counter()
        fill_refused = run_events(c, reqs, live, cap + 1, rng, cap, None)
        fill_s = time.perf_counter() - t0
        util = c.gpu_allocated_milli() / (1000 * gpu_count(nodes))
        print(
            f"{name}: fill {cap:,} events in {fill_s:.1f}s ({fill_refused:,} refused), "
            f"GPU allocated {util:.1%}",
            flush=True,
        )
        # the naive scan starts from a copy of this state and the same rng stream
        naive = Cluster.from_nodes(nodes, make_policy(name, **kw), indexed=False)
        naive.free_cpu, naive.free_mem = list(c.free_cpu), list(c.free_mem)
        naive.gpu_free = copy.deepcopy(c.gpu_free)
        naive_live, naive_rng = list(live), copy.deepcopy(rng)
        gc.collect()
        # the loaded fleet is long-lived: keep it out of the cyclic GC's full passes (as a
        # server would after loading its state), so a pause does not land in a decision
        gc.freeze()
        lat: list[float] = []
        refused = run_events(c, reqs, live, cap, rng, args.n, lat)
        row = summary(
            f"indexed {name}",
            lat,
            refused,
            {"state_mib": round(state_mib, 1), "fill_s": round(fill_s, 2), "util": util},
        )
        rows.append(row)
        if args.naive_n:
            lat = []
            refused = run_events(naive, reqs, naive_live, cap, naive_rng, args.naive_n, lat)
            nrow = summary(f"naive   {name}", lat, refused, {})
            row["x_naive"] = round(row["decisions_per_s"] / nrow["decisions_per_s"], 1)
            rows.append(nrow)
        del c, naive, live, naive_live
        gc.unfreeze()
        gc.collect()
    return {
        "fleet_nodes": len(nodes),
        "fleet_gpus": gpu_count(nodes),
        "sites": args.sites,
        "live_placements": cap,
        "peak_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default=str(OPENB_TRACE))
    ap.add_argument("--gpus", default="100000,250000", help="fleet sizes, comma-separated")
    ap.add_argument("--sites", type=int, default=32)
    ap.add_argument("--n", type=int, default=30_000, help="timed events per indexed policy")
    ap.add_argument("--naive-n", type=int, default=300, help="timed events for the full scan")
    ap.add_argument("--policies", default="best-fit,spread,fgd,cost-first,carbon-first")
    ap.add_argument("--util", type=float, default=0.85, help="GPU share the live set aims at")
    ap.add_argument("--fgd-classes", type=int, default=12, help="task classes fgd weighs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default="bench_placement")
    args = ap.parse_args()
    if args.quick:
        args.gpus, args.n, args.naive_n = "10000", 3_000, 200

    reqs = [p.request for p in load_pods(args.trace)]
    out: dict[str, Any] = {
        "benchmark": "placement",
        "seed": args.seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": [],
    }
    for gpus in (int(g) for g in args.gpus.split(",")):
        out["sizes"].append(bench_size(args, gpus, reqs))

    hdr = ["GPUs", "policy", "decisions", "refused", "dec/s", "x naive", "p50 us", "p99 us",
           "p99.9 us", "max us", "state MiB"]  # fmt: skip
    print()
    print(" | ".join(hdr))
    for size in out["sizes"]:
        for r in size["results"]:
            print(
                " | ".join(
                    str(v)
                    for v in (
                        f"{size['fleet_gpus']:,}", r["name"], r["decisions"], r["refused"],
                        r["decisions_per_s"], r.get("x_naive", ""), r["p50_us"], r["p99_us"],
                        r["p999_us"], r["max_us"], r.get("state_mib", ""),
                    )
                )
            )  # fmt: skip
        print(f"peak RSS after {size['fleet_gpus']:,} GPUs: {size['peak_rss_mib_so_far']} MiB")
    path = REPO / "benchmarks" / "results" / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
