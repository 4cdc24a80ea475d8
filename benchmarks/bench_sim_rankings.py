"""Placement policies ranked per workload, honestly: the same policies, untuned, on several
workloads, with `crucible sim compare`'s figures (allocation over one horizon, allocation
when the arrived demand equals the GPUs, tasks started, waits with censored ones, fragmented
GPUs sampled over the run).

Workloads:

1. ``openb-inflate``: FGD's experiment on the openb trace (tasks drawn at random arrive
   until 130% of the 6,212 GPUs are asked for; none leave), seeds 42-51;
2. ``openb``: the openb trace as recorded (one seed: a recorded replay draws nothing);
3. ``memory-heavy-classes``: whole-GPU, memory-heavy Poisson classes on 512 A100 (seeds 1-3);
4. ``memory-heavy`` and ``trace-sample``: the generated samples in examples/sim/traces.

The openb workloads need the trace (``CRUCIBLE_OPENB_TRACE_DIR``; by default the project's
copy beside the checkout) and are left out, with a note, where it is absent. Prints one
table per workload and writes ``benchmarks/results/bench_sim_rankings.json``::

    .venv/bin/python benchmarks/bench_sim_rankings.py            # about 5 minutes
    .venv/bin/python benchmarks/bench_sim_rankings.py --seeds 3  # fewer inflate seeds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The project's copy of the openb trace (shared/ beside the checkout; not in the product).
OPENB_TRACE = REPO.parent / "shared" / "data" / "traces" / "alibaba-openb-2023"
sys.path.insert(0, str(REPO / "src"))

from crucible.sim.compare import compare  # noqa: E402
from crucible.sim.compare_placement import RANKED  # noqa: E402
from crucible.sim.scenario import load_scenario  # noqa: E402

EXAMPLES = REPO / "examples" / "sim"
POLICIES = ["best-fit", "spread", "fgd"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _range(f: dict[str, Any], scale: float = 100, fmt: str = "{:.2f}") -> str:
    if f["mean"] is None:
        return "-"
    if f["min"] == f["max"]:
        return fmt.format(f["mean"] * scale)
    lo, hi = fmt.format(f["min"] * scale), fmt.format(f["max"] * scale)
    return f"{fmt.format(f['mean'] * scale)} ({lo}-{hi})"


def one(name: str, seeds: list[int]) -> dict[str, Any]:
    s = load_scenario(EXAMPLES / f"{name}.toml")
    t0 = time.perf_counter()
    c = compare(s, POLICIES, seeds)
    wall = time.perf_counter() - t0
    c.pop("runs")
    for f in c["policies"].values():
        f.pop("series")
    return {"workload": name, "wall_s": round(wall, 1)} | c


def show(r: dict[str, Any]) -> None:
    print(f"\n{r['workload']}: {r['scenario']} ({r['gpus']:,} GPUs, seeds {r['seeds']})")
    cols = ["policy", "alloc %", "alloc@cap %", "started %", "wait s", "frag GPUs"]
    print(" | ".join(cols))
    for p, f in r["policies"].items():
        print(
            " | ".join(
                [
                    p,
                    _range(f["gpu_allocation_mean"]),
                    _range(f["gpu_allocation_when_arrived_equals_capacity"]),
                    _range(f["started_share"]),
                    _range(f["wait_all_mean_s"], 1, "{:,.0f}"),
                    _range(f["fragmented_gpus_mean"], 1, "{:,.1f}"),
                ]
            )
        )
    for key, what, _ in RANKED:
        print(f"  {what}: " + " > ".join(" = ".join(t) for t in r["ranking"][key]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds of the inflate experiment")
    args = ap.parse_args()
    os.environ.setdefault("CRUCIBLE_OPENB_TRACE_DIR", str(OPENB_TRACE))
    have_openb = (
        Path(os.environ["CRUCIBLE_OPENB_TRACE_DIR"]) / "openb_node_list_all_node.csv"
    ).exists()
    plan: list[tuple[str, list[int]]] = []
    if have_openb:
        plan += [("openb-inflate", list(range(42, 42 + args.seeds))), ("openb", [1])]
    else:
        print("openb trace absent: openb workloads left out (set CRUCIBLE_OPENB_TRACE_DIR)")
    plan += [("memory-heavy-classes", [1, 2, 3]), ("memory-heavy", [1]), ("trace-sample", [1])]
    results = []
    for name, seeds in plan:
        r = one(name, seeds)
        show(r)
        results.append(r)
    out = REPO / "benchmarks" / "results" / "bench_sim_rankings.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
