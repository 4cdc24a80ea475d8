"""Scale-up from zero under a burst: how long until the autoscaler has N containers running.

An app whose function may have 8 containers (each call sleeps 2 s) gets a burst of 64
calls at once, from zero containers. For each run the table gives the time from the burst
to the 1st, 4th and 8th container being ready (worker connected), read from the store's
container timestamps, and when the last call finished. Runs are repeated (a new app each
time). Prints a table and writes ``benchmarks/results/bench_scaleup.json``::

    .venv/bin/python benchmarks/bench_scaleup.py            # 5 runs
    .venv/bin/python benchmarks/bench_scaleup.py --runs 2
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import _bench_app  # noqa: E402
from _exchange import Exchange, machine_info, print_table  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
N = 8
BURST = 64
SLEEP_S = 2.0


def one_run(ex: Exchange) -> dict[str, float]:
    client = ex.client()
    with _bench_app.burst_app.run(client=client):
        fn = _bench_app.burst_app.functions["burst_sleep"]
        fid = fn._function_id
        t0_ms = time.time_ns() // 1_000_000
        calls = [fn.spawn(SLEEP_S) for _ in range(BURST)]
        for c in calls:
            c.get(timeout=300)
        done_ms = time.time_ns() // 1_000_000
    client.close()
    with sqlite3.connect(ex.db_path) as db:
        ready = sorted(
            r[0]
            for r in db.execute(
                "SELECT ready_ms FROM containers WHERE function_id = ? AND ready_ms IS NOT NULL",
                (fid,),
            )
        )
    out = {"containers": float(len(ready)), "all_done_s": (done_ms - t0_ms) / 1000}
    for k in (1, 4, N):
        out[f"ready_{k}_s"] = (ready[k - 1] - t0_ms) / 1000 if len(ready) >= k else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_scaleup.json")
    args = ap.parse_args()
    runs = []
    with Exchange(env={"CRUCIBLE_SCALEDOWN_WINDOW_S": "1"}) as ex:
        for _ in range(args.runs):
            runs.append(one_run(ex))
            time.sleep(3)  # let the containers scale back to zero
    rows = [
        (
            i + 1,
            int(r["containers"]),
            f"{r['ready_1_s']:.2f}",
            f"{r['ready_4_s']:.2f}",
            f"{r[f'ready_{N}_s']:.2f}",
            f"{r['all_done_s']:.2f}",
        )
        for i, r in enumerate(runs)
    ]
    med = {k: median(r[k] for r in runs) for k in runs[0]}
    rows.append(
        (
            "median",
            int(med["containers"]),
            f"{med['ready_1_s']:.2f}",
            f"{med['ready_4_s']:.2f}",
            f"{med[f'ready_{N}_s']:.2f}",
            f"{med['all_done_s']:.2f}",
        )
    )
    print_table(
        f"Scale-up from zero: {BURST} calls of {SLEEP_S:g} s, max_containers={N} "
        "(seconds after the burst; ideal finish: "
        f"{BURST * SLEEP_S / N:g} s)",
        ["run", "containers", "1st ready", "4th ready", f"{N}th ready", "all done"],
        rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "scale-up from zero",
                "burst": BURST,
                "call_s": SLEEP_S,
                "max_containers": N,
                "runs": runs,
                "median": med,
                "machine": machine_info(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
