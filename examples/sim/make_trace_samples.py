"""Generate the small trace samples in examples/sim/traces/ (the generic trace format).

    python examples/sim/make_trace_samples.py [OUT_DIR]   # default: examples/sim/traces

Provenance: every row is synthetic, drawn from the seeded distributions below (seed 2026),
so running this again writes the same files byte for byte. No public trace is copied. The
shapes are chosen to exercise what a replay must get right, not to stand in for a real
cluster:

* ``lab-nodes.csv`` + ``mixed-tasks.csv``: a 160-GPU lab (16 nodes of 8 A100, 8 of 4 T4,
  4 CPU-only) and 400 tasks over two days: GPU shares (T4 or any), whole GPUs (1-8), gangs of
  2-4 whole 8-GPU nodes, CPU-only tasks, and 6 tasks no node can run (an H100, 16 GPUs on
  one node, 2 TB of memory, a gang of 20 nodes), which the report lists as impossible.
* ``memory-nodes.csv`` + ``memory-heavy-tasks.csv``: 8 nodes of 8 A100 with 64 cores and
  1 TiB each, and 400 whole-GPU, memory-heavy tasks over two days (1, 2 or 4 GPUs, 128-200
  GiB of memory and 8 cores per GPU, 3-hour mean runs, 6 hours of patience), arriving at
  more than the fleet's memory holds (about 9.5 TiB asked on average, 8 TiB in all):
  memory runs out before GPUs do.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from crucible.sim.trace_format import TraceTask, task_request, write_tasks

HERE = Path(__file__).resolve().parent / "traces"
GIB = 1024
HOUR = 3_600_000


def _nodes(path: Path, rows: list[tuple[str, int, str, int, int, int]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "gpus", "gpu_model", "cpu_milli", "memory_mib", "count"])
        w.writerows(rows)


def _arrivals(rng: random.Random, n: int, span_ms: int) -> list[int]:
    return sorted(rng.randrange(span_ms) for _ in range(n))


def mixed(rng: random.Random) -> list[TraceTask]:
    tasks: list[TraceTask] = []
    for i, at in enumerate(_arrivals(rng, 394, 48 * HOUR)):
        kind = rng.choices(["share", "whole", "gang", "cpu"], [0.35, 0.4, 0.1, 0.15])[0]
        duration = max(60_000, round(rng.expovariate(1 / (2 * HOUR))))
        nodes = 1
        if kind == "share":
            req = task_request(
                1, rng.choice([100, 250, 500]), 2000, 8 * GIB, rng.choice([(), ("T4",)])
            )
        elif kind == "whole":
            g = rng.choice([1, 1, 2, 4, 8])
            req = task_request(g, 1000, 4000 * g, 32 * GIB * g, ("A100",))
        elif kind == "gang":
            nodes = rng.choice([2, 3, 4])
            req = task_request(8, 1000, 32000, 256 * GIB, ("A100",))
        else:
            req = task_request(0, 0, rng.choice([4000, 16000]), 16 * GIB, ())
        tasks.append(TraceTask(f"{kind}-{i:03d}", at, duration, req, nodes, 6 * HOUR))
    impossible = [
        ("impossible-h100", task_request(1, 1000, 4000, 32 * GIB, ("H100",)), 1),
        ("impossible-16-gpus", task_request(16, 1000, 4000, 32 * GIB, ()), 1),
        ("impossible-t4x8", task_request(8, 1000, 4000, 32 * GIB, ("T4",)), 1),
        ("impossible-2tb", task_request(1, 1000, 4000, 2048 * GIB, ()), 1),
        ("impossible-200-cores", task_request(0, 0, 200_000, 16 * GIB, ()), 1),
        ("impossible-gang-20", task_request(8, 1000, 32000, 256 * GIB, ("A100",)), 20),
    ]
    for k, (name, req, nodes) in enumerate(impossible):
        tasks.append(TraceTask(name, (k + 1) * 6 * HOUR, HOUR, req, nodes, 6 * HOUR))
    return sorted(tasks, key=lambda t: t.submit_ms)


def memory_heavy(rng: random.Random) -> list[TraceTask]:
    tasks: list[TraceTask] = []
    for i, at in enumerate(_arrivals(rng, 400, 48 * HOUR)):
        g = rng.choice([1, 2, 4])
        mem = g * rng.randrange(128, 201) * GIB
        duration = max(60_000, round(rng.expovariate(1 / (3 * HOUR))))
        req = task_request(g, 1000, 8000 * g, mem, ("A100",))
        tasks.append(TraceTask(f"mem-{i:03d}", at, duration, req, 1, 6 * HOUR))
    return tasks


def main(out: Path = HERE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    _nodes(
        out / "lab-nodes.csv",
        [
            ("a100", 8, "A100", 64000, 1024 * GIB, 16),
            ("t4", 4, "T4", 32000, 256 * GIB, 8),
            ("cpu", 0, "", 96000, 512 * GIB, 4),
        ],
    )
    write_tasks(mixed(rng), out / "mixed-tasks.csv")
    _nodes(out / "memory-nodes.csv", [("a100", 8, "A100", 64000, 1024 * GIB, 8)])
    write_tasks(memory_heavy(rng), out / "memory-heavy-tasks.csv")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
