"""The web console with 1,000,000 stored calls: the real control plane (``crucible server``)
on loopback, each page fetched by a signed-in HTTP client (keep-alive), server time + one
loopback round trip.

The store is filled before the server starts, with bulk inserts: one account with an app of
4 functions and ``--calls`` calls over 30 days (succeeded, some failed, cancelled and timed
out; the newest hour too, so the app page counts real work), 200,000 log lines, 50,000
ledger charges, a host with an H100 and its offer; plus a second account with its own calls,
so every query must filter by tenant. Prints a table and writes
``benchmarks/results/bench_console.json``. Usage::

    .venv/bin/python benchmarks/bench_console.py                  # SQLite, 1,000,000 calls
    .venv/bin/python benchmarks/bench_console.py --calls 100000   # quicker
    .venv/bin/python benchmarks/bench_console.py --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402
from _exchange import machine_info, print_table  # noqa: E402
from sqlalchemy import Engine, insert  # noqa: E402

from crucible.protocol.accounts import Scope  # noqa: E402
from crucible.protocol.ids import _PAIRS  # noqa: E402
from crucible.server.services.accounts import issue_token  # noqa: E402
from crucible.server.store.db import create_store_engine, migrate  # noqa: E402
from crucible.server.store.tables import (  # noqa: E402
    accounts,
    apps,
    calls,
    functions,
    host_offers,
    hosts,
    ledger_entries,
    log_lines,
)
from crucible.testing import LocalExchange  # noqa: E402

DAY_MS = 86_400_000
CHUNK = 20_000
SPEC = {
    "name": "f",
    "code": {"bundle": "0" * 64, "module": "m", "qualname": "f"},
    "timeout_s": 60.0,
}


def _id(prefix: str, ms: int, n: int) -> str:
    """An id as ``new_id`` makes them (time-ordered), for a given millisecond."""
    value = (ms << 60) | n
    return f"{prefix}-{''.join(_PAIRS[(value >> s) & 1023] for s in range(100, -10, -10))}"


def _chunks(rows: list[dict[str, Any]], engine: Engine, table: Any) -> None:
    with engine.begin() as conn:
        for i in range(0, len(rows), CHUNK):
            conn.execute(insert(table), rows[i : i + CHUNK])


def seed(engine: Engine, n_calls: int, now: int) -> dict[str, Any]:
    rng = random.Random(7)
    with engine.begin() as conn:
        conn.execute(insert(accounts), [{"id": "ac-bench", "name": "bench", "created_ms": now}])
        conn.execute(insert(accounts), [{"id": "ac-other", "name": "other", "created_ms": now}])
        token = issue_token(conn, "ac-bench", Scope.ADMIN, "bench", now).token
        for acc, app_id in (("ac-bench", "ap-bench"), ("ac-other", "ap-other")):
            conn.execute(
                insert(apps),
                [
                    {
                        "id": app_id,
                        "account_id": acc,
                        "name": app_id,
                        "state": "running",
                        "ephemeral": False,
                        "created_ms": now - 30 * DAY_MS,
                    }
                ],
            )
        fns = [f"fn-bench{i}" for i in range(4)]
        conn.execute(
            insert(functions),
            [
                {
                    "id": f,
                    "account_id": "ac-bench",
                    "app_id": "ap-bench",
                    "name": f"f{i}",
                    "spec": {**SPEC, "name": f"f{i}"},
                    "created_ms": now,
                }
                for i, f in enumerate(fns)
            ]
            + [
                {
                    "id": "fn-other",
                    "account_id": "ac-other",
                    "app_id": "ap-other",
                    "name": "g",
                    "spec": {**SPEC, "name": "g"},
                    "created_ms": now,
                }
            ],
        )
        inv = {
            "cpu_cores": 64,
            "memory_mib": 524288,
            "disk_mib": 0,
            "gpus": [{"index": 0, "model": "H100", "memory_mib": 81920, "uuid": "g0"}],
        }
        conn.execute(
            insert(hosts),
            [
                {
                    "id": "ho-bench",
                    "account_id": "ac-bench",
                    "name": "bench-host",
                    "region": "local",
                    "state": "lost",  # no agent: the scheduler leaves it alone
                    "inventory": inv,
                    "registered_ms": now,
                    "last_seen_ms": now,
                }
            ],
        )
        conn.execute(
            insert(host_offers),
            [
                {
                    "host_id": "ho-bench",
                    "device_type": "H100",
                    "on_demand": 2_500_000,
                    "interruptible_min": 1_000_000,
                    "reserved": 2_000_000,
                    "updated_ms": now,
                }
            ],
        )

    started = time.perf_counter()
    states = ["succeeded"] * 95 + ["failed"] * 3 + ["cancelled", "timed_out"]
    span = 30 * DAY_MS
    # Oldest first; the newest 2 % fall in the last hour.
    times = sorted(
        now - (rng.randrange(3_600_000) if rng.random() < 0.02 else rng.randrange(span))
        for _ in range(n_calls)
    )
    rows = []
    last_id = ""
    for n, ms in enumerate(times):
        st = rng.choice(states)
        last_id = _id("ca", ms, n)
        rows.append(
            {
                "id": last_id,
                "account_id": "ac-bench",
                "app_id": "ap-bench",
                "function_id": fns[n % 4],
                "state": st,
                "attempts": 1,
                "created_ms": ms,
                "started_ms": ms + 5,
                "finished_ms": ms + 40,
                "exec_ms": 35,
                "cost_micros": 12,
                "error": {"code": "remote_error", "message": "boom"} if st == "failed" else None,
            }
        )
        if len(rows) == CHUNK:
            _chunks(rows, engine, calls)
            rows = []
    _chunks(rows, engine, calls)
    other = [
        {
            "id": _id("ca", now - i * 1000, 10**9 + i),
            "account_id": "ac-other",
            "app_id": "ap-other",
            "function_id": "fn-other",
            "state": "succeeded",
            "attempts": 1,
            "created_ms": now - i * 1000,
        }
        for i in range(10_000)
    ]
    _chunks(other, engine, calls)
    calls_s = time.perf_counter() - started
    _chunks(
        [
            {
                "account_id": "ac-bench",
                "app_id": "ap-bench",
                "function_id": fns[i % 4],
                "container_id": "ct-bench",
                "call_id": last_id,
                "ts_ms": now - 200_000 + i,
                "stream": "stdout",
                "line": f"log line {i} of the benchmark",
            }
            for i in range(200_000)
        ],
        engine,
        log_lines,
    )
    _chunks(
        [
            {
                "key": f"charge:bench:{i}",
                "kind": "charge",
                "at_ms": now - rng.randrange(span),
                "memo": "",
                "renter": "ac-bench",
                "host_id": "ho-bench",
                "app_id": "ap-bench",
                "function_id": fns[i % 4],
                "meter": f"ct-bench{i % 500}",
                "start_ms": now - 1000,
                "end_ms": now,
                "cost_micros": 1000,
            }
            for i in range(50_000)
        ],
        engine,
        ledger_entries,
    )
    return {
        "token": token,
        "fns": fns,
        "last_call": last_id,
        "mid": times[len(times) // 2],
        "calls_insert_s": calls_s,
    }


def timed(client: httpx.Client, path: str, repeat: int) -> dict[str, Any]:
    lat = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(path)
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    lat.sort()
    return {
        "page": path,
        "p50_ms": round(statistics.median(lat), 1),
        "p95_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 1),
        "max_ms": round(lat[-1], 1),
        "bytes": len(r.content),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bench_console.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.database_url or f"sqlite:///{root / 'store.db'}"
        engine = create_store_engine(url)
        migrate(engine)
        now = time.time_ns() // 1_000_000
        started = time.perf_counter()
        seeded = seed(engine, args.calls, now)
        seed_s = time.perf_counter() - started
        if engine.dialect.name == "postgresql":
            # What autovacuum does to a table this size soon after a bulk load: statistics for
            # the planner and a visibility map for index-only counts.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        engine.dispose()
        print(
            f"seeded {args.calls:,} calls in {seeded['calls_insert_s']:.1f} s "
            f"(everything: {seed_s:.1f} s)"
        )

        ex = LocalExchange(root, url)
        ex.start_server()
        try:
            with httpx.Client(base_url=ex.url, timeout=60) as client:
                form = client.get("/login").text
                csrf = re.search(r'name="csrf" value="([^"]*)"', form)
                assert csrf
                r = client.post("/login", data={"csrf": csrf.group(1), "token": seeded["token"]})
                assert r.status_code == 303, r.text
                fn = seeded["fns"][1]
                pages = [
                    "/",
                    "/apps/ap-bench",
                    "/apps/ap-bench/logs",
                    "/calls",
                    "/calls?state=failed",
                    "/calls?state=timed_out",
                    "/calls?state=queued",  # none stored: the worst case of a filter
                    f"/calls?app_id=ap-bench&function_id={fn}&state=failed",
                    f"/calls?before={seeded['mid']}:ca-zzzzzzzzzzzzzzzzzzzzzz",
                    f"/calls/{seeded['last_call']}",
                    "/bill",
                    "/bill?range=month",
                    "/bill/summary",
                    "/hosts",
                    "/hosts/ho-bench",
                    "/market",
                    "/admin",
                ]
                results = [timed(client, p, args.repeat) for p in pages]
        finally:
            ex.close()
    print_table(
        f"console pages with {args.calls:,} stored calls ({url.split(':')[0]})",
        ["page", "p50 ms", "p95 ms", "max ms", "bytes"],
        [[r["page"], r["p50_ms"], r["p95_ms"], r["max_ms"], r["bytes"]] for r in results],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "bench_console",
        "calls": args.calls,
        "store": url.split(":")[0],
        "repeat": args.repeat,
        "machine": machine_info(),
        "seed_s": round(seed_s, 1),
        "results": results,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
