"""Call-path benchmarks: Crucible and Ray side by side, in one run.

    .venv/bin/python benchmarks/bench_calls.py            # everything, full sizes
    .venv/bin/python benchmarks/bench_calls.py --quick    # smoke sizes (CI-like)
    .venv/bin/python benchmarks/bench_calls.py --only roundtrip,map --no-ray
    .venv/bin/python benchmarks/bench_calls.py --only roundtrip --no-ray \
        --postgres-url postgresql://postgres@127.0.0.1:54329/postgres --replicas 2

Benchmarks (see benchmarks/README.md):

- ``roundtrip``: one no-op call on a warm function / warm Ray task, sequential.
- ``map``: ``f.map(range(N))`` vs ``ray.get([f.remote(i) for i in range(N)])``.
- ``cold``: a call on a function with no container (new app run) / a fresh Ray actor.
- ``memory``: control-plane RSS and API latency with many completed calls in the store.

The Crucible phase runs first with Ray not started; then the exchange is stopped and the Ray
phase runs, so neither competes with the other's idle processes for the machine's cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_app
from _exchange import (
    CpuMeter,
    Exchange,
    machine_info,
    print_table,
    rss_kib,
    summarize_ms,
    wait_quiet,
    write_results,
)

ALL = ("roundtrip", "map", "cold", "memory")
TARGETS = {"roundtrip_p50_ms": 1.0, "roundtrip_p99_ms": 5.0, "map_inputs_per_s": 10_000}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


QUIET_S = [0.0]  # --wait-quiet


def settle(section: str, out: dict[str, Any]) -> None:
    """Record the machine's load before a section; with --wait-quiet, first wait for other
    people's load to drop."""
    out[f"loadavg_before_{section}"] = loadavg()
    if QUIET_S[0] > 0:
        q = wait_quiet(QUIET_S[0])
        out[f"quiet_before_{section}"] = q
        if q["other_cores"] >= 0.15:
            log(f"  the machine is busy ({q['other_cores']} cores used by others); going on")


def per_item_ms(cpu: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(v / n * 1000, 4) for k, v in cpu.items() if k != "wall"}


CHUNK = 200  # round trips per noise sample
QUIET_CORES = 0.25  # a chunk is "quiet" when others kept less than this busy meanwhile


def timed_chunks(call: Any, n: int, ex: Exchange | None) -> dict[str, Any]:
    """Time ``n`` sequential calls, in chunks of CHUNK with a CPU meter around each, so the
    summary can also be given over the chunks during which other people's load was low."""
    times: list[float] = []
    quiet: list[float] = []
    chunks = []
    total: dict[str, float] = {}
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        chunk: list[float] = []
        with CpuMeter(ex) as cpu:
            for _ in range(k):
                t = time.perf_counter()
                call()
                chunk.append(time.perf_counter() - t)
        done += k
        others = cpu.result["other"] / max(cpu.wall_s, 1e-3)
        chunks.append(
            {
                "n": k,
                "others_cores": round(others, 2),
                "p50_ms": round(summarize_ms(chunk)["p50_ms"], 3),
            }
        )
        times += chunk
        if others < QUIET_CORES:
            quiet += chunk
        for key, v in cpu.result.items():
            total[key] = round(total.get(key, 0.0) + v, 3)
    out: dict[str, Any] = summarize_ms(times)
    out["quiet"] = summarize_ms(quiet) if quiet else None
    out["quiet_threshold_cores"] = QUIET_CORES
    out["chunks"] = chunks
    out["cpu_s"] = total
    out["cpu_ms_per_call"] = per_item_ms(total, n)
    return out


# =============================================================================================
# Crucible
# =============================================================================================
def crucible_roundtrip(ex: Exchange, n: int, warm: int) -> dict[str, Any]:
    fn = _bench_app.noop
    for _ in range(warm):
        fn.remote()
    gc.collect()
    out = timed_chunks(fn.remote, n, ex)
    out["containers"] = len(ex.workers())
    return out


def crucible_map(ex: Exchange, n: int, reps: int, warm: int) -> dict[str, Any]:
    fn = _bench_app.ident
    assert list(fn.map(range(warm))) == list(range(warm))
    runs = []
    for rep in range(reps):
        gc.collect()
        load = loadavg()
        with CpuMeter(ex) as cpu:
            t = time.perf_counter()
            count = 0
            for i, value in enumerate(fn.map(range(n))):
                if value != i:
                    raise AssertionError(f"map result {i} is {value!r}")
                count += 1
            dt = time.perf_counter() - t
        assert count == n, (count, n)
        runs.append(
            {
                "seconds": round(dt, 3),
                "inputs_per_s": round(n / dt, 1),
                "containers_after": len(ex.workers()),
                "loadavg_before": load,
                "cpu_s": cpu.result,
                "cpu_ms_per_input": per_item_ms(cpu.result, n),
            }
        )
        log(f"  crucible map rep {rep + 1}/{reps}: {n / dt:,.0f} inputs/s ({dt:.2f} s)")
    rates: list[float] = [float(r["inputs_per_s"]) for r in runs]  # type: ignore[arg-type]
    return {"n": n, "reps": runs, "median_inputs_per_s": statistics.median(rates)}


def _container_timeline(db_path: Path, function_id: str) -> dict[str, int | None]:
    """Milestones of the (one) container and call of a function, from the store (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        c = conn.execute(
            "SELECT created_ms, started_ms, ready_ms FROM containers WHERE function_id=? "
            "ORDER BY created_ms LIMIT 1",
            (function_id,),
        ).fetchone()
        k = conn.execute(
            "SELECT created_ms, started_ms, finished_ms FROM calls WHERE function_id=? "
            "ORDER BY created_ms LIMIT 1",
            (function_id,),
        ).fetchone()
    finally:
        conn.close()
    if not c or not k:
        return {}
    call_created, _, call_finished = k
    ct_created, ct_started, ct_ready = c

    def d(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else b - a

    return {
        "call_to_container_created_ms": d(call_created, ct_created),
        "container_created_to_started_ms": d(ct_created, ct_started),
        "container_started_to_ready_ms": d(ct_started, ct_ready),
        "ready_to_call_finished_ms": d(ct_ready, call_finished),
        "call_created_to_finished_ms": d(call_created, call_finished),
    }


def crucible_cold(ex: Exchange, client: Any, runs: int) -> dict[str, Any]:
    app, fn = _bench_app.cold_app, _bench_app.cold_noop
    remote_s: list[float] = []
    total_s: list[float] = []
    timelines = []
    others: list[float] = []
    first: dict[str, Any] = {}
    for i in range(runs + 1):  # run 0 warms the agent's code cache: not counted
        if not ex.wait_workers(0, 30):
            log("  warning: a container of the previous run is still running")
        time.sleep(0.3)
        with CpuMeter(ex) as cpu:
            t0 = time.perf_counter()
            with app.run(client=client):
                fid = fn._function_id
                t1 = time.perf_counter()
                fn.remote()
                t2 = time.perf_counter()
        assert fid is not None
        others.append(cpu.result["other"] / max(cpu.wall_s, 1e-3))
        timeline = _container_timeline(ex.db_path, fid)
        if i == 0:
            first = {"remote_ms": round((t2 - t1) * 1000, 1), "timeline": timeline}
            others.pop()
            continue
        remote_s.append(t2 - t1)
        total_s.append(t2 - t0)
        timelines.append(timeline)
        log(f"  crucible cold run {i}/{runs}: {(t2 - t1) * 1000:.0f} ms")
    breakdown = {
        k: statistics.median([v for t in timelines if (v := t.get(k)) is not None] or [0])
        for k in (timelines[0] if timelines else {})
    }
    return {
        "call_to_result": summarize_ms(remote_s),
        "app_run_plus_call": summarize_ms(total_s),
        "median_breakdown_ms": breakdown,
        "first_run_uncached": first,
        "runs_ms": [round(s * 1000, 1) for s in remote_s],
        "others_cores_per_run": [round(x, 2) for x in others],
    }


def run_crucible(args: argparse.Namespace, which: set[str], env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    log("crucible: starting an exchange")
    with Exchange(
        env, keep=args.keep, postgres_url=args.postgres_url, replicas=args.replicas
    ) as ex:
        client = ex.client()
        out["exchange"] = {
            "url": ex.url,
            "root": str(ex.root),
            "env": env,
            "store": "postgresql" if args.postgres_url else "sqlite",
            "replicas": args.replicas,
        }
        if which & {"roundtrip", "map"}:
            with _bench_app.app.run(client=client):
                if "roundtrip" in which:
                    log(f"crucible: round trip x{args.rt_n}")
                    settle("roundtrip", out)
                    out["roundtrip"] = crucible_roundtrip(ex, args.rt_n, args.rt_warm)
                if "map" in which:
                    log(f"crucible: map {args.map_n:,} x{args.map_reps}")
                    settle("map", out)
                    out["map"] = crucible_map(ex, args.map_n, args.map_reps, args.map_warm)
        if "cold" in which:
            log(f"crucible: cold start x{args.cold_runs}")
            settle("cold", out)
            out["cold"] = crucible_cold(ex, client, args.cold_runs)
        client.close()
        out["server_rss_kib_end"] = rss_kib(ex.server.pid) if ex.server else None
    return out


# -- control-plane memory ---------------------------------------------------------------------
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_B32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def insert_completed_calls(
    database_url: str, account_id: str, app_id: str, function_id: str, total: int, batch: int
) -> dict[str, Any]:
    """Insert ``total`` succeeded calls straight into the store (SQLAlchemy Core executemany,
    one transaction per batch), as if .map runs of 10,000 inputs had finished over 30 days."""
    import cloudpickle
    from sqlalchemy import insert

    from crucible.server.store.db import create_store_engine
    from crucible.server.store.tables import calls

    engine = create_store_engine(database_url)
    args = cloudpickle.dumps(((0,), {}), protocol=5)
    result = cloudpickle.dumps(0, protocol=5)
    now = time.time_ns() // 1_000_000
    start = now - 30 * 86_400_000
    span = 30 * 86_400_000 - 60_000  # the newest one minute before now
    t0 = time.perf_counter()
    try:
        for lo in range(0, total, batch):
            rows = []
            for i in range(lo, min(lo + batch, total)):
                created = start + i * span // total
                rows.append(
                    {
                        "id": f"ca-{_b32(created, 10)}{_b32(i, 12)}",
                        "account_id": account_id,
                        "app_id": app_id,
                        "function_id": function_id,
                        "group_id": f"bench-group-{i // 10_000:06d}",
                        "idx": i % 10_000,
                        "state": "succeeded",
                        "attempts": 1,
                        "infra_requeues": 0,
                        "input": args,
                        "input_ref": None,
                        "input_size": len(args),
                        "output": result,
                        "output_ref": None,
                        "output_size": len(result),
                        "error": None,
                        "idempotency_key": None,
                        "container_id": None,
                        "created_ms": created,
                        "started_ms": created + 5,
                        "finished_ms": created + 7,
                        "next_attempt_ms": 0,
                        "deadline_ms": created + 300_005,
                        "delivered": True,
                        "exec_ms": i % 3,
                        "cost_micros": i % 2,
                    }
                )
            with engine.begin() as conn:
                conn.execute(insert(calls), rows)
            if (lo // batch) % 20 == 0:
                log(f"  inserted {min(lo + batch, total):,}/{total:,}")
    finally:
        engine.dispose()
    dt = time.perf_counter() - t0
    return {"rows": total, "batch": batch, "seconds": round(dt, 2), "rows_per_s": round(total / dt)}


def api_latencies(
    ex: Exchange, client: Any, n_remote: int, n_list: int, n_bill: int
) -> dict[str, Any]:
    t = client.transport
    remote, lists, bills = [], [], []
    for _ in range(n_remote):
        s = time.perf_counter()
        _bench_app.mem_noop.remote()
        remote.append(time.perf_counter() - s)
    for _ in range(n_list):
        s = time.perf_counter()
        status, body = t.request_raw("GET", "/v1/calls?limit=20")
        lists.append(time.perf_counter() - s)
        assert status == 200, body[:300]
    for _ in range(n_bill):
        s = time.perf_counter()
        status, body = t.request_raw("GET", "/v1/bill")
        bills.append(time.perf_counter() - s)
        assert status == 200, body[:300]
    return {
        "create_and_run_call": summarize_ms(remote),
        "list_calls_limit_20": summarize_ms(lists),
        "bill": summarize_ms(bills),
    }


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def run_memory(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": args.calls}
    log(f"memory: starting an exchange; {args.calls:,} completed calls will be inserted")
    with Exchange(env, keep=args.keep) as ex:
        client = ex.client()
        assert ex.server is not None and ex.account_id is not None
        pid = ex.server.pid
        with _bench_app.mem_app.run(client=client):
            fid = _bench_app.mem_noop._function_id
            app_id = _bench_app.mem_app.app_id
            assert fid is not None and app_id is not None
            for _ in range(20):
                _bench_app.mem_noop.remote()
            settle("memory", out)
            out["before"] = api_latencies(ex, client, 50, 50, 20)
            time.sleep(1.0)
            out["server_rss_kib_before"] = rss_kib(pid)
            out["db_bytes_before"] = _db_bytes(ex.db_path)
            log("memory: inserting")
            out["insert"] = insert_completed_calls(
                ex.database_url, ex.account_id, app_id, fid, args.calls, args.insert_batch
            )
            time.sleep(3.0)  # some scheduler ticks over the full table
            out["server_rss_kib_after_insert"] = rss_kib(pid)
            out["db_bytes_after"] = _db_bytes(ex.db_path)
            log("memory: API latencies with the rows in place")
            out["after"] = api_latencies(ex, client, 50, 50, 10)
            out["server_rss_kib_after_ops"] = rss_kib(pid)
            out["server_peak_rss_kib"] = rss_kib(pid, "VmHWM")
        # A restarted server with the rows in place: does it load any of them?
        log("memory: restarting the server")
        ex.stop_server()
        out["restart_seconds_to_healthy"] = round(ex.start_server(), 2)
        assert ex.server is not None
        time.sleep(2.0)
        out["server_rss_kib_after_restart"] = rss_kib(ex.server.pid)
        s = time.perf_counter()
        status, _ = client.transport.request_raw("GET", "/v1/bill")
        out["bill_ms_after_restart"] = round((time.perf_counter() - s) * 1000, 1)
        assert status == 200
        out["server_rss_kib_after_restart_and_bill"] = rss_kib(ex.server.pid)
        client.close()
    return out


# =============================================================================================
# Ray
# =============================================================================================
def run_ray(args: argparse.Namespace, which: set[str]) -> dict[str, Any]:
    try:
        import ray
    except ImportError as exc:
        log(f"ray is not installed ({exc}); skipping the Ray side")
        return {"skipped": f"ray not installed: {exc}"}

    out: dict[str, Any] = {"version": ray.__version__}
    log(f"ray {ray.__version__}: init")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False)
    out["init_s"] = round(time.perf_counter() - t, 2)

    @ray.remote
    def noop() -> None:
        return None

    @ray.remote
    def ident(x: int) -> int:
        return x

    @ray.remote
    class Pinger:
        def ping(self) -> None:
            return None

    try:
        if "roundtrip" in which:
            log(f"ray: round trip x{args.rt_n}")
            for _ in range(args.rt_warm):
                ray.get(noop.remote())
            gc.collect()
            settle("roundtrip", out)
            out["roundtrip"] = timed_chunks(lambda: ray.get(noop.remote()), args.rt_n, None)
        if "map" in which:
            log(f"ray: map {args.map_n:,} x{args.map_reps}")
            ray.get([ident.remote(i) for i in range(args.map_warm)])
            settle("map", out)
            runs = []
            for rep in range(args.map_reps):
                gc.collect()
                load = loadavg()
                with CpuMeter() as cpu:
                    s = time.perf_counter()
                    values = ray.get([ident.remote(i) for i in range(args.map_n)])
                    dt = time.perf_counter() - s
                assert values == list(range(args.map_n))
                runs.append(
                    {
                        "seconds": round(dt, 3),
                        "inputs_per_s": round(args.map_n / dt, 1),
                        "loadavg_before": load,
                        "cpu_s": cpu.result,
                        "cpu_ms_per_input": per_item_ms(cpu.result, args.map_n),
                    }
                )
                log(f"  ray map rep {rep + 1}/{args.map_reps}: {args.map_n / dt:,.0f} tasks/s")
            out["map"] = {
                "n": args.map_n,
                "reps": runs,
                "median_inputs_per_s": statistics.median(r["inputs_per_s"] for r in runs),
            }
        if "cold" in which:
            log(f"ray: fresh actor x{args.cold_runs}")
            settle("cold", out)
            times = []
            others: list[float] = []
            for i in range(args.cold_runs + 1):  # the first one is not counted, as for Crucible
                time.sleep(0.3)
                with CpuMeter() as cpu:
                    s = time.perf_counter()
                    actor = Pinger.remote()  # type: ignore[attr-defined]
                    ray.get(actor.ping.remote())
                    dt = time.perf_counter() - s
                ray.kill(actor)
                if i:
                    times.append(dt)
                    others.append(round(cpu.result["other"] / max(cpu.wall_s, 1e-3), 2))
            out["cold"] = {
                "call_to_result": summarize_ms(times),
                "runs_ms": [round(x * 1000, 1) for x in times],
                "others_cores_per_run": others,
            }
    finally:
        ray.shutdown()
    return out


# =============================================================================================
# report
# =============================================================================================
def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float | int):
        return f"{x:,.{digits}f}"
    return str(x)


def report(res: dict[str, Any]) -> None:
    c, r = res.get("crucible", {}), res.get("ray", {})
    summary: dict[str, Any] = {}
    if "roundtrip" in c or "roundtrip" in r:
        rows = []
        for name, side in (("Crucible", c), ("Ray", r)):
            rt = side.get("roundtrip")
            if rt:
                rows.append(
                    [
                        name,
                        rt["n"],
                        _f(rt["p50_ms"], 3),
                        _f(rt["p90_ms"], 3),
                        _f(rt["p99_ms"], 3),
                        _f(rt["mean_ms"], 3),
                        _f(rt["max_ms"], 1),
                    ]
                )
                q = rt.get("quiet")
                if q:
                    rows.append(
                        [
                            f"{name}, quiet chunks only",
                            q["n"],
                            _f(q["p50_ms"], 3),
                            _f(q["p90_ms"], 3),
                            _f(q["p99_ms"], 3),
                            _f(q["mean_ms"], 3),
                            _f(q["max_ms"], 1),
                        ]
                    )
        if "roundtrip" in c and "roundtrip" in r:
            a, b = c["roundtrip"], r["roundtrip"]
            ratio = {k: round(b[k] / a[k], 2) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
            summary["roundtrip_ratio_ray_over_crucible"] = ratio
            rows.append(
                [
                    "Ray/Crucible",
                    "",
                    ratio["p50_ms"],
                    ratio["p90_ms"],
                    ratio["p99_ms"],
                    ratio["mean_ms"],
                    "",
                ]
            )
        rows.append(["target (Crucible)", "", "<= 1.000", "", "<= 5.000", "", ""])
        if c.get("roundtrip", {}).get("quiet") and r.get("roundtrip", {}).get("quiet"):
            a, b = c["roundtrip"]["quiet"], r["roundtrip"]["quiet"]
            ratio = {k: round(b[k] / a[k], 2) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
            summary["roundtrip_ratio_ray_over_crucible_quiet"] = ratio
            rows.append(
                [
                    "Ray/Crucible, quiet",
                    "",
                    ratio["p50_ms"],
                    ratio["p90_ms"],
                    ratio["p99_ms"],
                    ratio["mean_ms"],
                    "",
                ]
            )
        print_table(
            f"1. one no-op call, round trip (ms); quiet = {CHUNK}-call chunks during "
            f"which others kept < {QUIET_CORES} cores busy",
            ["", "n", "p50", "p90", "p99", "mean", "max"],
            rows,
        )
        if "roundtrip" in c:
            summary["roundtrip_meets_target"] = (
                c["roundtrip"]["p50_ms"] <= TARGETS["roundtrip_p50_ms"]
                and c["roundtrip"]["p99_ms"] <= TARGETS["roundtrip_p99_ms"]
            )
    if "map" in c or "map" in r:
        rows = []
        for name, side in (("Crucible", c), ("Ray", r)):
            m = side.get("map")
            if m:
                reps = ", ".join(f"{x['inputs_per_s']:,.0f}" for x in m["reps"])
                rows.append([name, f"{m['n']:,}", reps, _f(m["median_inputs_per_s"], 0)])
        if "map" in c and "map" in r:
            ratio = round(c["map"]["median_inputs_per_s"] / r["map"]["median_inputs_per_s"], 2)
            summary["map_ratio_crucible_over_ray"] = ratio
            rows.append(["Crucible/Ray", "", "", ratio])
        rows.append(["target (Crucible)", "", "", ">= 10,000"])
        print_table(
            "2. .map over tiny inputs (inputs/s)", ["", "inputs", "per repetition", "median"], rows
        )
        if "map" in c:
            summary["map_meets_target"] = (
                c["map"]["median_inputs_per_s"] >= TARGETS["map_inputs_per_s"]
            )
    if "cold" in c or "cold" in r:
        rows = []
        for name, side in (
            ("Crucible (new app run, call -> result)", c),
            ("Ray (fresh actor, first call)", r),
        ):
            k = side.get("cold")
            if k:
                s = k["call_to_result"]
                o = k.get("others_cores_per_run") or []
                rows.append(
                    [
                        name,
                        s["n"],
                        _f(s["p50_ms"], 1),
                        _f(s["p90_ms"], 1),
                        _f(s["min_ms"], 1),
                        _f(s["max_ms"], 1),
                        _f(statistics.median(o), 2) if o else "-",
                    ]
                )
        if "cold" in c:
            s = c["cold"]["app_run_plus_call"]
            rows.append(
                [
                    "Crucible incl. app.run() setup",
                    s["n"],
                    _f(s["p50_ms"], 1),
                    _f(s["p90_ms"], 1),
                    _f(s["min_ms"], 1),
                    _f(s["max_ms"], 1),
                    "",
                ]
            )
        print_table(
            "3. cold function: call to result (ms)",
            ["", "n", "p50", "p90", "min", "max", "others (cores, median)"],
            rows,
        )
        if "cold" in c and c["cold"]["median_breakdown_ms"]:
            print_table(
                "   Crucible cold start, median breakdown from the store's timestamps",
                ["step", "ms"],
                [[k, v] for k, v in c["cold"]["median_breakdown_ms"].items()],
            )
    m = res.get("memory")
    if m:

        def mib(key: str) -> str:
            return _f((m.get(key) or 0) / 1024, 1)

        print_table(
            f"4. control plane with {m['calls']:,} completed calls in the store",
            ["", "value"],
            [
                ["insert (rows/s)", f"{m['insert']['rows_per_s']:,}"],
                ["server RSS before (MiB)", mib("server_rss_kib_before")],
                ["server RSS after insert (MiB)", mib("server_rss_kib_after_insert")],
                ["server RSS after API ops (MiB)", mib("server_rss_kib_after_ops")],
                ["server peak RSS (MiB)", mib("server_peak_rss_kib")],
                [
                    "server RSS after restart + bill (MiB)",
                    mib("server_rss_kib_after_restart_and_bill"),
                ],
                [
                    "store size before / after (MiB)",
                    f"{m['db_bytes_before'] / 2**20:,.1f} / {m['db_bytes_after'] / 2**20:,.1f}",
                ],
                ["restart to healthy (s)", m["restart_seconds_to_healthy"]],
            ],
        )
        rows = []
        for op in ("create_and_run_call", "list_calls_limit_20", "bill"):
            b, a = m["before"][op], m["after"][op]
            rows.append(
                [op, _f(b["p50_ms"], 2), _f(a["p50_ms"], 2), _f(b["p99_ms"], 2), _f(a["p99_ms"], 2)]
            )
        print_table(
            "   API latency (ms), empty store vs with the rows",
            ["operation", "p50 before", "p50 after", "p99 before", "p99 after"],
            rows,
        )
    if "roundtrip" in c or "map" in c:
        rows = []
        for label, key, per in (
            ("round trip", "roundtrip", "cpu_ms_per_call"),
            ("map", "map", "cpu_ms_per_input"),
        ):
            if key not in c:
                continue
            d = c[key][per] if key == "roundtrip" else c[key]["reps"][-1][per]
            rows.append(
                [
                    f"Crucible {label}",
                    *(_f(d.get(x), 4) for x in ("sdk", "server", "agent", "workers", "other")),
                ]
            )
            if key in r:
                d = r[key][per] if key == "roundtrip" else r[key]["reps"][-1][per]
                rows.append(
                    [
                        f"Ray {label}",
                        _f(d.get("sdk"), 4),
                        "(raylet+gcs+workers)",
                        "",
                        _f(d.get("tree"), 4),
                        _f(d.get("other"), 4),
                    ]
                )
        print_table(
            "   CPU ms per call/input by process (other = load not ours, noise)",
            ["", "sdk/driver", "server", "agent", "workers", "other"],
            rows,
        )
    rows = []
    for name, side in (("Crucible", c), ("Ray", r)):
        cpus = []
        if "roundtrip" in side:
            cpus.append(("round trip", side["roundtrip"]["cpu_s"]))
        for i, rep in enumerate(side.get("map", {}).get("reps", [])):
            cpus.append((f"map rep {i + 1}", rep["cpu_s"]))
        for label, cpu in cpus:
            wall = max(cpu.get("wall", 0.0), 1e-3)
            rows.append(
                [
                    f"{name} {label}",
                    _f(wall, 1),
                    _f(cpu.get("machine", 0) / wall, 2),
                    _f((cpu.get("sdk", 0) + cpu.get("tree", 0)) / wall, 2),
                    _f(cpu.get("other", 0) / wall, 2),
                    _f(cpu.get("irq", 0) / wall, 2),
                    _f(cpu.get("steal", 0) / wall, 2),
                ]
            )
    if rows:
        print_table(
            "   noise: cores busy during each measurement (2 cores in all; irq is "
            "interrupt time, steal the hypervisor's)",
            ["", "wall s", "processes", "ours", "others", "irq", "steal"],
            rows,
        )
    res["summary"] = summary
    print("\nsummary:", summary, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    p.add_argument("--skip", default="", help="comma list of benchmarks to leave out")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute)")
    p.add_argument("--no-ray", action="store_true", help="run the Crucible side only")
    p.add_argument("--no-crucible", action="store_true", help="run the Ray side only")
    p.add_argument("--rt-n", type=int, help="round trips measured (default 2000)")
    p.add_argument("--rt-warm", type=int, help="round trips before measuring (default 200)")
    p.add_argument("--map-n", type=int, help="inputs per .map (default 50000)")
    p.add_argument("--map-reps", type=int, help="repetitions of .map (default 3)")
    p.add_argument("--map-warm", type=int, help="inputs of the warm-up .map (default 2000)")
    p.add_argument("--cold-runs", type=int, help="cold starts measured (default 10)")
    p.add_argument("--calls", type=int, help="completed calls for `memory` (default 1000000)")
    p.add_argument("--insert-batch", type=int, default=20_000, help="rows per insert transaction")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the exchange, e.g. CRUCIBLE_SCHEDULER_INTERVAL_S=0.1",
    )
    p.add_argument(
        "--postgres-url",
        metavar="URL",
        help="run the Crucible exchange on a fresh database of this PostgreSQL server "
        "(default: SQLite, one process)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="N `crucible server` replicas behind haproxy (needs --postgres-url); the agent "
        "and the client talk to the balancer",
    )
    p.add_argument("--name", help="results file name (default bench_calls, or bench_calls-quick)")
    p.add_argument("--keep", action="store_true", help="keep the exchanges' temp dirs and logs")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each section, wait up to this long for other people's load on "
        "the machine to drop below 0.15 cores (a shared machine)",
    )
    a = p.parse_args(argv)
    full = {
        "rt_n": 2000,
        "rt_warm": 200,
        "map_n": 50_000,
        "map_reps": 3,
        "map_warm": 2000,
        "cold_runs": 10,
        "calls": 1_000_000,
    }
    quick = {
        "rt_n": 300,
        "rt_warm": 50,
        "map_n": 5_000,
        "map_reps": 3,
        "map_warm": 500,
        "cold_runs": 3,
        "calls": 50_000,
    }
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.name = a.name or ("bench_calls-quick" if a.quick else "bench_calls")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    which = {w.strip() for w in args.only.split(",") if w.strip()}
    which -= {w.strip() for w in args.skip.split(",") if w.strip()}
    unknown = which - set(ALL)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    env = dict(kv.split("=", 1) for kv in args.env)
    QUIET_S[0] = args.wait_quiet
    res: dict[str, Any] = {
        "benchmark": "bench_calls",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k not in ("env",)}
        | {"env": env, "selected": sorted(which)},
        "targets": TARGETS,
    }
    started = time.perf_counter()
    calls_side = which & {"roundtrip", "map", "cold"}
    if calls_side and not args.no_crucible:
        res["crucible"] = run_crucible(args, calls_side, env)
    if "memory" in which and not args.no_crucible:
        res["memory"] = run_memory(args, env)
    if calls_side and not args.no_ray:
        res["ray"] = run_ray(args, calls_side)
    res["machine"]["loadavg_at_end"] = loadavg()
    res["total_seconds"] = round(time.perf_counter() - started, 1)
    report(res)
    path = write_results(args.name, res)
    print(f"\nwrote {path} ({res['total_seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
