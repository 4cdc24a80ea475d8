"""Market operations at fleet scale, in the pure core (no server, no store).

Builds a book of 100,000 GPUs (12,500 hosts of 8, five models, eight regions, prices,
reliability and carbon drawn around the catalog's reference prices), fills it to about 70 %
with on-demand and interruptible leases, then measures, one operation at a time:

- quote:   ``Market.quote`` of a random request (1/2/4/8 x model, on-demand or interruptible,
           mixed preferences, some with a region or max_price);
- lease:   ``lease_on_hosts`` (core/leasing.py: decide + apply, the path the scheduler and
           the simulator's market runs take) of such a request; each is followed by the
           release of a random running lease (not timed) so utilisation stays put;
- preempt: with every H100 leased to interruptible bids, ``lease_on_hosts`` of on-demand or
           higher-bid requests; latency over the operations that preempted (those that
           found devices freed by an earlier preemption, or were refused once the low bids
           were gone, are counted apart);
- release: ``Market.release`` of a random running lease.

After the fill the loaded book is frozen out of the cyclic GC (``gc.freeze()``; see
``--no-gc-freeze``). Prints a table (ops/s = operations / time spent in them; p50/p99) and writes
``benchmarks/results/bench_market.json``. Usage::

    .venv/bin/python benchmarks/bench_market.py            # 100,000 GPUs, 20,000 ops each
    .venv/bin/python benchmarks/bench_market.py --quick    # 10,000 GPUs, 2,000 ops each
    .venv/bin/python benchmarks/bench_market.py --audit    # also check every index at the end
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _exchange import machine_info, print_table  # noqa: E402

from crucible.core.leasing import lease_on_hosts  # noqa: E402
from crucible.core.market import (  # noqa: E402
    HostSpec,
    LeaseGranted,
    LeaseRequest,
    Market,
    MarketRules,
    Offer,
    Prefer,
    Tier,
)

# (model, share of hosts, reference on-demand $/GPU-hour)
MODELS = [
    ("H100", 0.40, 1.89),
    ("A100-80GB", 0.25, 1.29),
    ("L40S", 0.15, 0.99),
    ("L4", 0.10, 0.44),
    ("RTX4090", 0.10, 0.34),
]
REGIONS = [f"region-{i}" for i in range(8)]
CARBON = [None, 20, 50, 200, 400, 700]
ACCOUNTS = [f"ac-{i}" for i in range(2_000)]
GPUS_PER_HOST = 8


def micros(dollars: float) -> int:
    return round(dollars * 1_000_000)


def build(rng: random.Random, gpus: int) -> tuple[Market, dict[str, int]]:
    m = Market(MarketRules(model_speed={name: 10 - i for i, (name, _, _) in enumerate(MODELS)}))
    hosts = gpus // GPUS_PER_HOST
    per_model: dict[str, int] = {}
    names = [name for name, _, _ in MODELS]
    weights = [share for _, share, _ in MODELS]
    ref = {name: price for name, _, price in MODELS}
    for i in range(hosts):
        model = rng.choices(names, weights)[0]
        per_model[model] = per_model.get(model, 0) + GPUS_PER_HOST
        spec = HostSpec(
            f"ho-{i:06d}",
            rng.choice(REGIONS),
            gpus=tuple((g, model) for g in range(GPUS_PER_HOST)),
            reliability_ppm=rng.randrange(900_000, 999_001),
            energy_source="grid",
            carbon_g_per_kwh=rng.choice(CARBON),
        )
        m.add_host(spec)
        ask = ref[model] * rng.uniform(0.8, 1.3)
        m.set_offer(
            spec.host_id,
            model,
            Offer(
                micros(ask),
                micros(ask * rng.uniform(0.3, 0.6)),
                micros(ask * rng.uniform(0.7, 0.85)),
            ),
        )
    return m, per_model


class Running:
    """The benchmark's own list of running lease ids (O(1) random pick and removal)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, lease_id: str) -> None:
        self.pos[lease_id] = len(self.ids)
        self.ids.append(lease_id)

    def remove(self, lease_id: str) -> None:
        i = self.pos.pop(lease_id)
        last = self.ids.pop()
        if last != lease_id:
            self.ids[i] = last
            self.pos[last] = i

    def track(self, d: LeaseGranted) -> int:
        """Record a grant; returns the change in leased GPUs."""
        for p in d.preemptions:
            self.remove(p.lease.lease_id)
        for x in d.leases:
            self.add(x.lease_id)
        return sum(x.count for x in d.leases) - sum(p.lease.count for p in d.preemptions)


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"le-{self.n:08d}"


def random_request(rng: random.Random, ids: Ids, *, model: str | None = None) -> LeaseRequest:
    name, _, ref = MODELS[0] if model else rng.choices(MODELS, [s for _, s, _ in MODELS])[0]
    name = model or name
    tier = rng.choice([Tier.ON_DEMAND, Tier.INTERRUPTIBLE])
    bid = None
    if tier is Tier.INTERRUPTIBLE and rng.random() < 0.6:
        bid = micros(ref * rng.uniform(0.3, 0.9))
    max_price = micros(ref * 1.5) if rng.random() < 0.3 else None
    if bid is not None and max_price is not None:
        max_price = max(max_price, bid)
    return LeaseRequest(
        account=rng.choice(ACCOUNTS),
        models=(name,),
        count=rng.choice([1, 1, 2, 4, 8]),
        tier=tier,
        bid=bid,
        max_price=max_price,
        region=rng.choice(REGIONS) if rng.random() < 0.2 else None,
        prefer=rng.choices(list(Prefer), [0.7, 0.2, 0.1])[0],
        lease_id=ids(),
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(op: Callable[[], Any], latencies: list[float]) -> Any:
    t0 = time.perf_counter_ns()
    out = op()
    latencies.append((time.perf_counter_ns() - t0) / 1_000)  # microseconds
    return out


def summary(name: str, lat_us: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    total_s = sum(lat_us) / 1e6
    return {
        "op": name,
        "n": len(lat_us),
        "ops_per_s": round(len(lat_us) / total_s) if total_s else None,
        "p50_us": round(percentile(lat_us, 0.50), 1),
        "p90_us": round(percentile(lat_us, 0.90), 1),
        "p99_us": round(percentile(lat_us, 0.99), 1),
        "max_us": round(max(lat_us), 1),
        **extra,
    }


def fill(
    m: Market, rng: random.Random, ids: Ids, running: Running, target: int, now: int
) -> tuple[int, float]:
    """Lease until ``target`` more GPUs are leased. Returns (leases, seconds)."""
    leased = 0
    n = 0
    t0 = time.perf_counter()
    while leased < target:
        d = m.lease(random_request(rng, ids), now)
        if isinstance(d, LeaseGranted):
            leased += running.track(d)
            n += 1
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpus", type=int, default=100_000)
    ap.add_argument("--ops", type=int, default=20_000, help="operations per measurement")
    ap.add_argument("--utilisation", type=float, default=0.70)
    ap.add_argument("--seed", type=int, default=20_260_301)
    ap.add_argument("--quick", action="store_true", help="10,000 GPUs and 2,000 ops")
    ap.add_argument("--audit", action="store_true", help="check every index at the end (slow)")
    ap.add_argument("--name", default="bench_market")
    ap.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the loaded book to the cyclic GC (its full passes over the ~1M objects of "
        "a 100,000-GPU book cost 10-150 ms and land on whichever operation triggers them)",
    )
    args = ap.parse_args()
    if args.quick:
        args.gpus, args.ops = 10_000, 2_000
    rng = random.Random(args.seed)
    ids = Ids()
    running = Running()
    info = machine_info()
    cpu0 = time.process_time()
    gc.collect()

    t0 = time.perf_counter()
    m, per_model = build(rng, args.gpus)
    build_s = time.perf_counter() - t0
    now = 1_000_000
    fill_leases, fill_s = fill(m, rng, ids, running, int(args.gpus * args.utilisation), now)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.no_gc_freeze:
        # What a long-running server does after loading its state: move it out of the
        # cyclic GC's generations, so full collections do not rescan the whole book.
        gc.collect()
        gc.freeze()
    print(f"book: {args.gpus:,} GPUs on {args.gpus // GPUS_PER_HOST:,} hosts {per_model}")
    print(
        f"built in {build_s:.2f} s; filled with {fill_leases:,} leases in {fill_s:.2f} s; "
        f"max RSS {rss_mib:.0f} MiB"
    )

    results: list[dict[str, Any]] = []

    # quote
    lat: list[float] = []
    available = 0
    for _ in range(args.ops):
        request = random_request(rng, ids)
        q = timed(partial(m.quote, request, now), lat)
        available += q.available
    results.append(summary("quote", lat, {"available": available}))

    # lease (+ untimed release to hold utilisation)
    lat = []
    granted = preempting = 0
    for _ in range(args.ops):
        now += 1
        request = random_request(rng, ids)
        d = timed(partial(lease_on_hosts, m, request, now), lat)
        if isinstance(d, LeaseGranted):
            granted += 1
            preempting += bool(d.preemptions)
            running.track(d)
            victim = rng.choice(running.ids)
            m.release(victim, now)
            running.remove(victim)
    results.append(summary("lease", lat, {"granted": granted, "preempting": preempting}))

    # release
    lat = []
    freed = 0
    for _ in range(min(args.ops, len(running.ids) // 2)):
        now += 1
        lease_id = rng.choice(running.ids)
        running.remove(lease_id)
        ended = timed(partial(m.release, lease_id, now), lat)
        freed += ended.count
    results.append(summary("release", lat, {}))
    fill(m, rng, ids, running, freed, now)

    # preempt: lease every free H100 at its host's minimum bid, then outbid those leases
    now += 1
    while True:
        low = LeaseRequest(rng.choice(ACCOUNTS), ("H100",), tier=Tier.INTERRUPTIBLE, lease_id=ids())
        d = m.decide_lease(low, now)
        if not isinstance(d, LeaseGranted) or d.preemptions:
            break
        m.apply(d)
        running.track(d)
    book = m.book("H100", now)
    lat = []
    preempting_lat: list[float] = []
    refused_lat: list[float] = []
    preempted = granted = refused = 0
    for i in range(args.ops):
        now += 1
        if i % 2:
            request = LeaseRequest(
                rng.choice(ACCOUNTS), ("H100",), count=rng.choice([1, 2, 4, 8]), lease_id=ids()
            )
        else:
            request = LeaseRequest(
                rng.choice(ACCOUNTS),
                ("H100",),
                count=rng.choice([1, 2, 4, 8]),
                tier=Tier.INTERRUPTIBLE,
                bid=micros(2.50) + i,
                lease_id=ids(),
            )
        d = timed(partial(lease_on_hosts, m, request, now), lat)
        if isinstance(d, LeaseGranted):
            granted += 1
            preempted += len(d.preemptions)
            running.track(d)
            if d.preemptions:
                preempting_lat.append(lat[-1])
        else:
            refused += 1
            refused_lat.append(lat[-1])
            if refused >= 200:
                break  # the low bids are all gone: what is left is on-demand and high bids
    results.append(
        summary(
            "preempt",
            preempting_lat,
            {
                "leases_preempted": preempted,
                "h100_free_before": book.free_devices,
                "granted_without_preempting": granted - len(preempting_lat),
            },
        )
    )
    if refused_lat:
        results.append(summary("refused (H100 full)", refused_lat, {}))

    audit_problems = None
    if args.audit:
        t0 = time.perf_counter()
        audit_problems = m.audit()
        print(f"audit: {len(audit_problems)} problems in {time.perf_counter() - t0:.1f} s")

    cpu_s = time.process_time() - cpu0
    print_table(
        f"market core at {args.gpus:,} GPUs (pure Python, one thread; latency in microseconds)",
        ["op", "n", "ops/s", "p50", "p90", "p99", "max", "notes"],
        [
            [
                r["op"],
                r["n"],
                f"{r['ops_per_s']:,}",
                r["p50_us"],
                r["p90_us"],
                r["p99_us"],
                r["max_us"],
                ", ".join(
                    f"{k}={v}"
                    for k, v in r.items()
                    if k not in {"op", "n", "ops_per_s", "p50_us", "p90_us", "p99_us", "max_us"}
                ),
            ]
            for r in results
        ],
    )
    out = {
        "benchmark": "market core",
        "gpus": args.gpus,
        "hosts": args.gpus // GPUS_PER_HOST,
        "gpus_per_model": per_model,
        "utilisation_target": args.utilisation,
        "seed": args.seed,
        "build_s": round(build_s, 2),
        "fill": {"leases": fill_leases, "seconds": round(fill_s, 2)},
        "max_rss_mib": round(rss_mib),
        "gc_freeze_after_fill": not args.no_gc_freeze,
        "process_cpu_s": round(cpu_s, 1),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "audit_problems": audit_problems,
        "machine": info,
    }
    path = REPO / "benchmarks" / "results" / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
