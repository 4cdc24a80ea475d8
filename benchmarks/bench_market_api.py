"""Market operations through the API: the real control plane (``crucible server``, SQLite)
on loopback with a book of 100,000 GPUs, measured from one HTTP client.

The store is seeded before the server starts (12,500 hosts of 8 GPUs with their offers, and
running interruptible containers holding about 70 % of the GPUs: every H100, half of the
rest), so the server builds its market from the store exactly as it does after a restart.
Then, one request at a time over a keep-alive connection:

- quote:   ``POST /v1/market/quote`` of a random request (1/2/4/8 x model, on-demand or
           interruptible, some with a bid, region or max_price, mixed preferences);
- reserve: ``POST /v1/reservations`` of 1-8 GPUs of a random non-H100 model for one hour,
           starting in a day: decide, write the reservation and its ledger charge, commit;
- preempt: ``POST /v1/reservations`` of 1-8 H100 starting now: every H100 is held by an
           interruptible lease, so each one preempts (the leases' calls are requeued, their
           containers stopped and their metering ended, in the same transaction).

The scheduler loop runs meanwhile (every 0.25 s), as in production. Prints a table next to
the pure core's figures (``benchmarks/results/bench_market.json``, if present) and writes
``benchmarks/results/bench_market_api.json``. Usage::

    .venv/bin/python benchmarks/bench_market_api.py            # 100,000 GPUs
    .venv/bin/python benchmarks/bench_market_api.py --quick    # 10,000 GPUs, fewer ops
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _exchange import machine_info, print_table, rss_kib  # noqa: E402
from bench_market import CARBON, MODELS, REGIONS, micros, percentile  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from crucible.errors import MarketRefusedError  # noqa: E402
from crucible.protocol.accounts import Scope  # noqa: E402
from crucible.protocol.transport import Transport  # noqa: E402
from crucible.server.services.accounts import issue_token  # noqa: E402
from crucible.server.store.db import create_store_engine, migrate  # noqa: E402
from crucible.server.store.tables import (  # noqa: E402
    accounts,
    apps,
    containers,
    functions,
    host_offers,
    hosts,
)
from crucible.testing import LocalExchange  # noqa: E402

GPUS_PER_HOST = 8
RESULTS = REPO / "benchmarks" / "results"


def seed(url: str, gpus: int, rng: random.Random) -> dict[str, Any]:
    """Hosts, offers, and running interruptible containers, written straight to the store."""
    engine = create_store_engine(url)
    migrate(engine)
    now = int(time.time() * 1000)
    names = [m for m, _, _ in MODELS]
    weights = [s for _, s, _ in MODELS]
    ref = {m: p for m, _, p in MODELS}
    host_rows, offer_rows, ct_rows = [], [], []
    leased = 0
    per_model: dict[str, int] = {}
    code = {"bundle": "0" * 64, "module": "bench", "qualname": "f"}
    spec = {
        "name": "f",
        "code": code,
        "resources": {"cpu": 0.25, "memory_mib": 512, "gpus": [{"model": "H100", "count": 1}]},
        "timeout_s": 300.0,
        "retries": {
            "max_retries": 0,
            "initial_delay_s": 1,
            "backoff_coefficient": 2,
            "max_delay_s": 60,
        },
        "max_containers": None,
        "scaledown_window_s": None,
        "is_async": False,
        "market": {"tier": "interruptible"},
    }
    for i in range(gpus // GPUS_PER_HOST):
        model = rng.choices(names, weights)[0]
        per_model[model] = per_model.get(model, 0) + GPUS_PER_HOST
        hid = f"ho-{i:06d}"
        host_rows.append(
            {
                "id": hid,
                "account_id": "ac-host",
                "name": hid,
                "region": rng.choice(REGIONS),
                "state": "ready",
                "inventory": {
                    "cpu_cores": 128,
                    "memory_mib": 1 << 20,
                    "disk_mib": 0,
                    "gpus": [
                        {
                            "index": g,
                            "model": model,
                            "memory_mib": 81920,
                            "uuid": f"{hid}-{g}",
                            "fake": True,
                        }
                        for g in range(GPUS_PER_HOST)
                    ],
                },
                "agent_version": "bench",
                "registered_ms": now,
                "last_seen_ms": now,
                "energy_source": "grid",
                "carbon_g_per_kwh": rng.choice(CARBON),
                "draining": False,
                "leases_ended": rng.randrange(0, 50),
                "leases_faulted": 0,
                # Renters of other accounts lease them: the fleet isolates fully.
                "isolated": True,
            }
        )
        ask = ref[model] * rng.uniform(0.8, 1.3)
        minimum = ask * rng.uniform(0.3, 0.6)
        offer_rows.append(
            {
                "host_id": hid,
                "device_type": model,
                "on_demand": micros(ask),
                "interruptible_min": micros(minimum),
                "reserved": micros(ask * rng.uniform(0.7, 0.85)),
                "memory_on_demand": 0,
                "memory_interruptible": 0,
                "memory_reserved": 0,
                "updated_ms": now,
            }
        )
        # Every H100 leased; half of the other GPUs.
        taken = GPUS_PER_HOST if model == "H100" else rng.choice([0, 4, 8])
        for start in range(0, taken, 2):
            bid = micros(minimum * rng.uniform(1.0, 1.5))
            ct_rows.append(
                {
                    "id": f"ct-{hid}-{start}",
                    "account_id": "ac-renter",
                    "function_id": "fn-bench",
                    "host_id": hid,
                    "state": "running",
                    "cpu": 0.25,
                    "memory_mib": 512,
                    "gpu_model": model,
                    "gpu_indices": [start, start + 1],
                    "rate_micros_per_hour": 2 * bid,
                    "tier": "interruptible",
                    "unit_price_micros": bid,
                    "start_after_ms": 0,
                    "fee_ppm": 100_000,
                    "created_ms": now,
                    "started_ms": now,
                    "ready_ms": now,
                    "last_active_ms": now,
                }
            )
            leased += 2
    with engine.begin() as conn:
        conn.execute(
            insert(accounts),
            [
                {"id": "ac-host", "name": "bench-hosts", "created_ms": now},
                {"id": "ac-renter", "name": "bench-renter", "created_ms": now},
                {"id": "ac-quoter", "name": "bench-quoter", "created_ms": now},
            ],
        )
        conn.execute(
            insert(apps).values(
                id="ap-bench",
                account_id="ac-renter",
                name="bench",
                state="running",
                ephemeral=False,
                created_ms=now,
            )
        )
        conn.execute(
            insert(functions).values(
                id="fn-bench",
                account_id="ac-renter",
                app_id="ap-bench",
                name="f",
                spec=spec,
                created_ms=now,
            )
        )
        conn.execute(insert(hosts), host_rows)
        conn.execute(insert(host_offers), offer_rows)
        conn.execute(insert(containers), ct_rows)
        token = issue_token(conn, "ac-quoter", Scope.USER, "bench", now).token
    engine.dispose()
    return {
        "hosts": len(host_rows),
        "gpus_per_model": per_model,
        "leased_gpus": leased,
        "token": token,
    }


def quote_body(rng: random.Random) -> dict[str, Any]:
    name, _, ref = rng.choices(MODELS, [s for _, s, _ in MODELS])[0]
    tier = rng.choice(["on_demand", "interruptible"])
    body: dict[str, Any] = {
        "gpu": f"{rng.choice([1, 1, 2, 4, 8])}x{name}",
        "tier": tier,
        "prefer": rng.choices(["cheapest", "greenest", "fastest"], [0.7, 0.2, 0.1])[0],
    }
    if tier == "interruptible" and rng.random() < 0.6:
        body["bid_micros"] = micros(ref * rng.uniform(0.3, 0.9))
    if rng.random() < 0.3:
        body["max_price_micros"] = max(micros(ref * 1.5), body.get("bid_micros", 0))
    if rng.random() < 0.2:
        body["region"] = rng.choice(REGIONS)
    return body


def timed(fn: Any, lat: list[float]) -> Any:
    t0 = time.perf_counter_ns()
    out = fn()
    lat.append((time.perf_counter_ns() - t0) / 1000)
    return out


def reserve_many(
    client: Transport, n: int, body: Callable[[], dict[str, Any]]
) -> tuple[list[float], int]:
    """``n`` reservations, each timed, refused ones (market_refused) included; returns the
    latencies in microseconds and how many were granted."""
    lat: list[float] = []
    granted = 0
    for _ in range(n):
        req = body()
        t0 = time.perf_counter_ns()
        try:
            client.post("/v1/reservations", req)
            granted += 1
        except MarketRefusedError:
            pass
        finally:
            lat.append((time.perf_counter_ns() - t0) / 1000)
    return lat, granted


def row(op: str, lat: list[float], **extra: Any) -> dict[str, Any]:
    total = sum(lat) / 1e6
    return {
        "op": op,
        "n": len(lat),
        "ops_per_s": round(len(lat) / total) if total else None,
        "p50_us": round(percentile(lat, 0.5), 1),
        "p99_us": round(percentile(lat, 0.99), 1),
        "max_us": round(max(lat), 1) if lat else None,
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpus", type=int, default=100_000)
    ap.add_argument("--quotes", type=int, default=5_000)
    ap.add_argument("--reserves", type=int, default=1_000)
    ap.add_argument("--preempts", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="10,000 GPUs, a tenth of the ops")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_market_api.json")
    args = ap.parse_args()
    if args.quick:
        args.gpus, args.quotes, args.reserves, args.preempts = 10_000, 500, 100, 50
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-market-"))
    url = f"sqlite:///{root / 'store.db'}"
    t0 = time.perf_counter()
    seeded = seed(url, args.gpus, rng)
    seed_s = time.perf_counter() - t0
    env = {
        # The seeded hosts have no agents: keep them (and their idle containers) as they are.
        "CRUCIBLE_HOST_TIMEOUT_S": "1000000",
        "CRUCIBLE_SCALEDOWN_WINDOW_S": "1000000",
        "CRUCIBLE_CONTAINER_START_TIMEOUT_S": "1000000",
    }
    ex = LocalExchange(root, url, env=env)
    try:
        t0 = time.perf_counter()
        ex.start_server(timeout_s=300)
        client = Transport(ex.url, seeded.pop("token"))
        # The first request waits for the market to be built from the store.
        client.post("/v1/market/quote", {"gpu": "H100"})
        ready_s = time.perf_counter() - t0
        results = []

        lat: list[float] = []
        available = 0
        for _ in range(args.quotes):
            q = timed(lambda: client.post("/v1/market/quote", quote_body(rng)), lat)
            available += bool(q["available"])
        results.append(row("quote", lat, available=available))

        day = int(time.time() * 1000) + 86_400_000
        others = [m for m, _, _ in MODELS if m != "H100"]
        lat, granted = reserve_many(
            client,
            args.reserves,
            lambda: {
                "gpu": f"{rng.choice([1, 2, 4, 8])}x{rng.choice(others)}",
                "start_ms": day,
                "hours": 1,
            },
        )
        results.append(row("reserve", lat, granted=granted))
        lat, granted = reserve_many(
            client,
            args.preempts,
            lambda: {
                "gpu": f"{rng.choice([1, 2, 4, 8])}xH100",
                "start_ms": int(time.time() * 1000),
                "hours": 1,
            },
        )
        results.append(row("preempt (reserve now on leased H100)", lat, granted=granted))
        server_rss = rss_kib(ex.server.pid) if ex.server else None
        client.close()
    finally:
        ex.close()

    core: dict[str, Any] = {}
    core_path = RESULTS / "bench_market.json"
    if core_path.exists():
        core = {r["op"]: r for r in json.loads(core_path.read_text())["results"]}
    rows = []
    for r in results:
        c = core.get(r["op"].split()[0]) or core.get("lease" if r["op"] == "reserve" else "")
        rows.append(
            (
                r["op"],
                r["n"],
                r["ops_per_s"],
                r["p50_us"],
                r["p99_us"],
                c.get("ops_per_s") if c else "",
                c.get("p99_us") if c else "",
            )
        )
    print_table(
        f"Market through the API: {args.gpus:,} GPUs, {seeded['leased_gpus']:,} leased "
        f"(server: SQLite, one client, keep-alive)",
        ["op", "n", "ops/s", "p50 us", "p99 us", "core ops/s", "core p99 us"],
        rows,
    )
    out = {
        "benchmark": "market through the API",
        "gpus": args.gpus,
        "seed": args.seed,
        **seeded,
        "seed_s": round(seed_s, 2),
        "server_ready_s": round(ready_s, 2),
        "server_rss_mib": round(server_rss / 1024) if server_rss else None,
        "results": results,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
