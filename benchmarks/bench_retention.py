"""The store's size per million calls, and what retention leaves of it.

The control plane's own app, in this process, on SQLite (and on PostgreSQL with
``--postgres URL``): an account's function receives calls through the API in batches of
1,000, one container claims them and returns their results through its exchange, prints two
lines per call, and is metered (and charged in the ledger) as it runs at ``--rate`` calls per
second. Then the clock moves past every retention window and the scheduler's retention runs.
Prints a table of bytes per call and per million calls by table, before and after, and
writes ``benchmarks/results/bench_retention.json``::

    .venv/bin/python benchmarks/bench_retention.py                      # 20,000 calls, SQLite
    .venv/bin/python benchmarks/bench_retention.py --calls 50000 \\
        --postgres postgresql://postgres@127.0.0.1:54329/postgres

Sizes are what the database reports for each table with its indexes (SQLite: ``dbstat``
after VACUUM; PostgreSQL: ``pg_total_relation_size`` after VACUUM FULL), so they are the
rows' real cost, not the file's free pages.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _exchange import machine_info, print_table, write_results  # noqa: E402

from crucible.core.scheduling import StartContainer  # noqa: E402
from crucible.protocol.accounts import Scope  # noqa: E402
from crucible.server.app import build_state, create_app  # noqa: E402
from crucible.server.auth import container_token  # noqa: E402
from crucible.server.billing.service import meter_containers  # noqa: E402
from crucible.server.scheduler.loop import SchedulerLoop  # noqa: E402
from crucible.server.services.accounts import ensure_account, issue_token  # noqa: E402
from crucible.server.services.containers import create_containers  # noqa: E402
from crucible.server.store.tables import metadata  # noqa: E402
from crucible.settings import load_settings  # noqa: E402

DAY_MS = 86_400_000
BUNDLE = b"PK\x05\x06" + b"\0" * 18  # an empty zip: the server never opens bundles
# What a small .remote() sends and gets back (cloudpickle of a few arguments / a result).
ARGS = base64.b64encode(b"\x80\x05" + b"a" * 120).decode()
RESULT = base64.b64encode(b"\x80\x05" + b"r" * 40).decode()


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def now_ms(self) -> int:
        return self.ms


class Store:
    """The app in this process on one database, driven through its HTTP API."""

    def __init__(self, url: str, home: Path) -> None:
        settings = load_settings(
            environ={},
            home=str(home),
            database_url=url,
            dev_mode=True,
            log_lines_per_container=10**9,
        )
        self.state = build_state(settings)
        self.clock = Clock()
        self.state.clock = self.clock
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.state, run_scheduler=False)),
            base_url="http://bench",
        )

    def ok(self, method: str, path: str, token: str, **kw: Any) -> Any:
        r = self.loop.run_until_complete(
            self.http.request(method, path, headers={"authorization": f"Bearer {token}"}, **kw)
        )
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()
        self.state.engine.dispose()


def fill(store: Store, n_calls: int, rate: float) -> dict[str, Any]:
    """Run ``n_calls`` calls through the API; returns timings and the tables' sizes before
    the first call."""
    with store.state.engine.begin() as conn:
        renter = issue_token(conn, ensure_account(conn, "renter", 0), Scope.USER, "r", 0).token
        owner_id = ensure_account(conn, "owner", 0, provider=True)
        owner = issue_token(conn, owner_id, Scope.HOST, "h", 0).token
    host = store.ok(
        "POST",
        "/v1/hosts/register",
        owner,
        json={"name": "host", "inventory": {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0}},
    )["id"]
    import hashlib

    sha = hashlib.sha256(BUNDLE).hexdigest()
    store.ok("PUT", f"/v1/blobs/{sha}", renter, content=BUNDLE)
    app_id = store.ok("POST", "/v1/apps", renter, json={"name": "bench"})["id"]
    body = {"name": "f", "code": {"bundle": sha, "module": "m", "qualname": "f"}}
    fid = store.ok("POST", f"/v1/apps/{app_id}/functions", renter, json={"functions": [body]})[0][
        "id"
    ]
    with store.state.engine.begin() as conn:
        create_containers(
            conn,
            [StartContainer(fid, host, 0.25, 512, None, ())],
            {fid: conn.execute(text("select id from accounts where name='renter'")).scalar_one()},
            store.state.market.cpu_offer,
            0,
            0,
        )
        cid = conn.execute(text("select id from containers")).scalar_one()
    ctoken = container_token(store.state.secret, cid)
    seq = 1

    def sync(state: str, **extra: Any) -> None:
        nonlocal seq
        report = {"container_id": cid, "state": state, **extra}
        store.ok(
            "POST",
            f"/v1/hosts/{host}/sync",
            owner,
            json={"containers": [report], "wait_s": 0, "seq": seq},
        )
        seq += 1

    sync("running", pid=1)
    baseline = sizes(store)  # the account, host, app, function and container alone
    started = time.perf_counter()
    done = 0
    while done < n_calls:
        size = min(1000, n_calls - done)
        store.ok(
            "POST",
            f"/v1/functions/{fid}/calls",
            renter,
            json={"inputs": [{"args": {"data": ARGS}} for _ in range(size)]},
        )
        got = store.ok(
            "POST",
            f"/v1/containers/{cid}/exchange",
            ctoken,
            json={"outputs": [], "want": size, "wait_s": 0},
        )["inputs"]
        lines = [
            {"ts_ms": store.clock.ms, "call_id": i["call_id"], "stream": "stdout", "line": line}
            for i in got
            for line in (f"processing {i['call_id']}", "done in 3 ms")
        ]
        store.ok("POST", f"/v1/containers/{cid}/logs", ctoken, json={"lines": lines[:1000]})
        store.ok("POST", f"/v1/containers/{cid}/logs", ctoken, json={"lines": lines[1000:]})
        outputs = [
            {
                "call_id": i["call_id"],
                "attempt": i["attempt"],
                "status": "succeeded",
                "result": {"data": RESULT, "size": 42},
                "exec_us": 3000,
            }
            for i in got
        ]
        store.ok(
            "POST",
            f"/v1/containers/{cid}/exchange",
            ctoken,
            json={"outputs": outputs, "want": 0, "wait_s": 0},
        )
        done += len(got)
        store.clock.ms += int(len(got) / rate * 1000)
        with store.state.engine.begin() as conn:
            meter_containers(
                conn, store.clock.ms, int(store.state.settings.meter_interval_s * 1000)
            )
    sync("exited", exit_code=0, reason="exited")
    return {
        "fill_s": round(time.perf_counter() - started, 1),
        "container_s": done / rate,
        "bytes_baseline": baseline,
    }


def sizes(store: Store) -> dict[str, int]:
    """Bytes per table, its indexes included, after the database gave back free space."""
    engine = store.state.engine
    names = [t.name for t in metadata.sorted_tables]
    out: dict[str, int] = {}
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM")
            rows = conn.exec_driver_sql(
                "SELECT tbl_name, SUM(pgsize) FROM dbstat JOIN sqlite_master USING (name) "
                "GROUP BY tbl_name"
            ).all()
        found = {r[0]: int(r[1]) for r in rows}
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM FULL")
            found = {
                name: int(
                    conn.execute(
                        text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": name}
                    ).scalar_one()
                )
                for name in names
            }
    for name in names:
        if found.get(name):
            out[name] = found[name]
    return out


def measure(url: str, n_calls: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crucible-bench-retention-") as home:
        store = Store(url, Path(home))
        try:
            filled = fill(store, n_calls, rate)
            before = sizes(store)
            store.clock.ms += 100 * DAY_MS  # past every default window
            loop = SchedulerLoop(store.state)
            t0 = time.perf_counter()
            pruned = loop.retention(store.clock.ms, budget_s=3600)
            prune_s = time.perf_counter() - t0
            after = sizes(store)
        finally:
            store.close()
    rows = pruned.calls + pruned.items + pruned.logs + pruned.intervals
    return {
        "calls": n_calls,
        "rate_calls_per_s": rate,
        **filled,
        "bytes_before": before,
        "bytes_after": after,
        "pruned": {
            "calls": pruned.calls,
            "log_lines": pruned.logs,
            "metered_intervals": pruned.intervals,
            "blobs": pruned.blobs,
            "seconds": round(prune_s, 2),
            "rows_per_s": round(rows / prune_s) if prune_s else None,
        },
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f}" if n < 10 * 2**20 else f"{n / 2**20:,.0f}"


def _postgres_db(url: str) -> tuple[str, Any]:
    """A throwaway database on the server at ``url``; returns its URL and a dropper."""
    name = f"crucible_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=100.0, help="calls per container-second")
    ap.add_argument("--postgres", default="", help="a PostgreSQL server URL (a database is made)")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.calls, args.rate)
    if args.postgres:
        url, drop = _postgres_db(args.postgres)
        try:
            results["postgresql"] = measure(url, args.calls, args.rate)
        finally:
            drop()

    for store, r in results.items():
        n = r["calls"]
        base = r["bytes_baseline"]
        grown = {t: r["bytes_before"].get(t, 0) - base.get(t, 0) for t in r["bytes_before"]}
        kept = {t: r["bytes_after"].get(t, 0) - base.get(t, 0) for t in r["bytes_after"]}
        rows = []
        for t in sorted(grown, key=lambda t: -grown[t]):
            if grown[t] <= 0 and kept.get(t, 0) <= 0:
                continue  # no growth: its first pages were there before the calls
            rows.append((t, round(grown[t] / n), _mib(grown[t] / n * 1e6), _mib(kept.get(t, 0))))
        g_all, k_all = sum(grown.values()), sum(max(0, v) for v in kept.values())
        rows.append(("all tables", round(g_all / n), _mib(g_all / n * 1e6), _mib(k_all)))
        print_table(
            f"{store}: {n:,} calls at {r['rate_calls_per_s']:g} calls per container-second "
            f"({r['container_s']:,.0f} container-seconds); retention pruned "
            f"{r['pruned']['calls']:,} calls, {r['pruned']['log_lines']:,} log lines and "
            f"{r['pruned']['metered_intervals']:,} intervals in {r['pruned']['seconds']} s",
            ["table", "bytes per call", "MiB per 1M calls", "MiB left after retention"],
            rows,
        )
        r["bytes_per_call"] = round(g_all / n)
        r["mib_per_million_calls"] = round(g_all / n * 1e6 / 2**20, 1)
        r["mib_left_after_retention"] = round(k_all / 2**20, 2)
    path = write_results(
        "bench_retention",
        {
            "benchmark": "store size per million calls",
            "results": results,
            "machine": machine_info(),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
