#!/usr/bin/env python3
"""The scheduler tick's own cost at fleet size: the server's app in this process (SQLite, or
PostgreSQL with --database-url), N hosts of G fake GPUs registered, P one-GPU pods placed and
reported started, then the CPU of a tick with nothing new (a quiet tick) and of a tick that
places a few new pods, with the clock held still.

A quiet tick's cost is what the exchange pays per tick for the fleet it holds, whatever the
work; the issue's goal is a tick whose cost follows what changed. Steadier than the fleet
emulator's rates on a shared machine (one process, CPU time). Writes results/bench_tick.json.

    .venv/bin/python benchmarks/bench_tick.py --hosts 200 --gpus-per-host 50 --pods 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402
from _exchange import (  # noqa: E402
    drop_database,
    machine_info,
    print_table,
    scratch_database,
    write_results,
)

from crucible.protocol.accounts import Scope  # noqa: E402
from crucible.server.app import build_state, create_app  # noqa: E402
from crucible.server.scheduler.loop import SchedulerLoop  # noqa: E402
from crucible.server.services.accounts import ensure_account, issue_token  # noqa: E402
from crucible.server.services.pods import MAX_PODS  # noqa: E402
from crucible.settings import load_settings  # noqa: E402

T0 = 1_800_000_000_000
FULL_ISOLATION = {
    "runtime": "bwrap",
    "namespaces": True,
    "seccomp": True,
    "per_sandbox_uid": True,
    "pids_limit": "cgroup",
    "memory_limit": "cgroup",
    "cpu_limit": "cgroup",
    "disk_limit": "tmpfs",
    "network_policy": True,
    "gpu_isolation": True,
}


class StillClock:
    """The clock held still: no start timeout or metering interval falls due mid-run."""

    def now_ms(self) -> int:
        return T0


class InProcess:
    def __init__(self, home: Path, database_url: str) -> None:
        settings = load_settings(
            environ={}, home=str(home), database_url=database_url, dev_mode=True
        )
        self.state = build_state(settings)
        self.state.clock = StillClock()
        app = create_app(self.state, run_scheduler=False)
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench"
        )

    def token(self, account: str, scope: Scope) -> str:
        with self.state.engine.begin() as conn:
            account_id = ensure_account(conn, account, 0, provider=scope is Scope.HOST)
            return issue_token(conn, account_id, scope, account, 0).token

    def post(self, path: str, token: str, body: dict[str, Any]) -> Any:
        r = self.loop.run_until_complete(
            self.client.post(path, json=body, headers={"authorization": f"Bearer {token}"})
        )
        if r.status_code >= 300:
            raise SystemExit(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
        self.state.engine.dispose()


def cpu_ms(fn: Any, n: int = 1) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) * 1000 / n


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-tick-"))
    scratch = scratch_database(args.database_url) if args.database_url else None
    url = scratch[0] if scratch else f"sqlite:///{tmp / 'store.db'}"
    ex = InProcess(tmp, url)
    try:
        host_token = ex.token("hoster", Scope.HOST)
        gpus = [
            {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"G{i}", "fake": True}
            for i in range(args.gpus_per_host)
        ]
        inv = {"cpu_cores": 256, "memory_mib": 4_000_000, "disk_mib": 1 << 30, "gpus": gpus}
        host_ids = [
            ex.post(
                "/v1/hosts/register",
                host_token,
                {"name": f"h{i}", "inventory": inv, "isolation": FULL_ISOLATION},
            )["id"]
            for i in range(args.hosts)
        ]
        loop = SchedulerLoop(ex.state)
        renters = [ex.token(f"renter-{k}", Scope.USER) for k in range(-(-args.pods // MAX_PODS))]
        pod = {"gpu": "H100:1", "cpu": 1, "memory": "1GiB"}
        for i in range(args.pods):
            ex.post("/v1/pods", renters[i // MAX_PODS], {"name": f"p{i}", **pod})
            if i % 500 == 499:
                loop.tick()
        loop.tick()
        started = 0
        for h in host_ids:
            path = f"/v1/hosts/{h}/sync"
            reply = ex.post(path, host_token, {"containers": [], "wait_s": 0})
            reports = [
                {"container_id": s["container_id"], "state": "running"} for s in reply["start"]
            ]
            started += len(reports)
            if reports:
                ex.post(path, host_token, {"containers": reports, "wait_s": 0})
        loop.tick()
        loop.tick()
        quiet = cpu_ms(loop.tick, args.ticks)
        late = ex.token("late", Scope.USER)
        for j in range(args.new_pods):
            ex.post("/v1/pods", late, {"name": f"late{j}", **pod})
        placing = cpu_ms(loop.tick)
        return {
            "hosts": args.hosts,
            "gpus": args.hosts * args.gpus_per_host,
            "pods_started": started,
            "database": "postgresql" if args.database_url else "sqlite",
            "quiet_tick_cpu_ms": round(quiet, 2),
            "new_pods": args.new_pods,
            "tick_placing_new_pods_cpu_ms": round(placing, 2),
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": machine_info(),
        }
    finally:
        ex.close()
        if scratch:
            drop_database(args.database_url, scratch[1])
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--gpus-per-host", type=int, default=50)
    ap.add_argument("--pods", type=int, default=2000, help="one-GPU pods placed and started")
    ap.add_argument("--new-pods", type=int, default=20, help="placed by the measured tick")
    ap.add_argument("--ticks", type=int, default=10, help="quiet ticks averaged")
    ap.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (postgresql://...): a fresh database is made on it for the "
        "run and dropped after (default SQLite)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    for flag in ("hosts", "gpus_per_host", "pods", "new_pods", "ticks"):
        if getattr(args, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be positive")
    if args.pods > args.hosts * args.gpus_per_host:
        ap.error("--pods must fit the fleet (one GPU each)")
    r = run(args)
    print_table(
        "Scheduler tick",
        ["figure", "value"],
        [
            ["fleet", f"{r['hosts']:,} hosts, {r['gpus']:,} GPUs, {r['database']}"],
            ["pods started", f"{r['pods_started']:,}"],
            ["quiet tick (CPU)", f"{r['quiet_tick_cpu_ms']:,} ms"],
            [
                f"tick placing {r['new_pods']} pods (CPU)",
                f"{r['tick_placing_new_pods_cpu_ms']:,} ms",
            ],
        ],
    )
    if args.out:
        args.out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"wrote {args.out}")
    else:
        print(f"wrote {write_results('bench_tick', r)}")


if __name__ == "__main__":
    main()
