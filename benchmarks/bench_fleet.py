"""A fleet emulator: real ``crucible server`` process(es), thousands of emulated hosts that
speak the real agent protocol over HTTP, and the openb workload as GPU pods.

* **Server**: ``crucible server`` subprocess(es) on loopback: SQLite by default, or
  ``--database-url postgresql://...`` (a fresh database is created in that server and dropped
  afterwards). ``--replicas N`` starts N servers on the same database (home, admin token and
  store shared) and spreads agents and clients across them round-robin; N > 1 needs a
  control plane that elects one scheduler (it runs as N independent servers otherwise).
* **Hosts**: the openb node list (``shared/data/traces/alibaba-openb-2023``) replicated to
  ``--gpus`` GPUs (node shapes: GPU count, CPU, memory; every GPU declared as a fake
  ``--model``), or, without the trace, a generated fleet of 8-GPU nodes. ``--hosts N`` instead
  spreads the GPUs evenly over N hosts. ``--agent-procs`` processes each run an asyncio
  client (httpx) per host: ``POST /v1/hosts/register``, then ``POST /v1/hosts/{id}/sync``
  long-polls with the server's heartbeat interval, reporting each assigned container
  ``running`` and, after its sampled duration, ``exited`` (exit code 0), each with its energy
  so far (700 W a GPU; ``--no-energy`` leaves the figures out), as the real agent
  (``crucible.agent.main``) does.
* **Workload**: the openb pod list's GPU pods (``num_gpu`` ≥ 1; fractional GPUs ask for
  one), submitted open-loop at ``--rate`` pods/s for ``--duration`` s through
  ``POST /v1/pods`` (GPU pods are the live path for leased GPU work); each "runs" for a
  duration sampled from the trace's lifetimes scaled so their median is ``--run-s``.

Figures: placements/s end to end (assignments seen by the hosts per second of the submit
window), submit→assignment latency p50/p99 (client submit to host receipt, wall clocks of
one machine), API latency p50/p99 under the hosts' sync load (the submits themselves and a
probe reading ``GET /v1/pods/{name}``), sync latency of syncs the server answered early
(with work), the server process(es)' CPU per placement over the run (with the machine's
load average: on a shared machine the wall-clock rates follow the other work), and database
growth extrapolated to bytes/hour. Prints a table and writes
``benchmarks/results/bench_fleet.json`` (``--out`` to write elsewhere)::

    .venv/bin/python benchmarks/bench_fleet.py --quick          # < 1 min
    .venv/bin/python benchmarks/bench_fleet.py --gpus 100000 --rate 2000 --duration 60
    .venv/bin/python benchmarks/bench_fleet.py --database-url postgresql://postgres@127.0.0.1:54329/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402
from _exchange import (  # noqa: E402
    drop_database,
    machine_info,
    print_table,
    scratch_database,
    summarize_ms,
    write_results,
)

from crucible.protocol.hosts import IsolationReport  # noqa: E402
from crucible.server.services.pods import MAX_PODS  # noqa: E402
from crucible.testing import LocalExchange, free_port, wait_for  # noqa: E402

# What an agent measures on a host that may run any tenant's code (bwrap, cgroups, seccomp).
FULL_ISOLATION = IsolationReport(
    runtime="bwrap",
    namespaces=True,
    seccomp=True,
    per_sandbox_uid=True,
    pids_limit="cgroup",
    memory_limit="cgroup",
    cpu_limit="cgroup",
    disk_limit="tmpfs",
    network_policy=True,
    gpu_isolation=True,
).model_dump(mode="json")
PODS_PER_RENTER = MAX_PODS  # an account holds at most this many pods (stopped ones included)
# What an emulated GPU draws while its pod runs (an H100 SXM's board limit), for the energy
# figures that hosts report with every sync.
_GPU_WATTS = 700
_TRACE_TAIL = Path("shared") / "data" / "traces" / "alibaba-openb-2023"


def default_trace() -> Path:
    """CRUCIBLE_OPENB_TRACE_DIR, else the project's copy in a shared/ beside the checkout
    (or beside a folder above it: a worktree sits deeper than the main checkout)."""
    if os.environ.get("CRUCIBLE_OPENB_TRACE_DIR"):
        return Path(os.environ["CRUCIBLE_OPENB_TRACE_DIR"]).expanduser()
    for up in REPO.parents:
        if (up / _TRACE_TAIL).is_dir():
            return up / _TRACE_TAIL
    return REPO.parent / _TRACE_TAIL


MAX_GPUS_PER_HOST = 64  # Inventory.gpus max_length


# -- the fleet and the workload ------------------------------------------------------------------
def fleet_shapes(gpus: int, hosts: int | None, trace: Path) -> tuple[list[dict[str, Any]], str]:
    """Host shapes (gpus, cpu cores, memory MiB) holding at least ``gpus`` GPUs, and where
    they came from."""
    if hosts:
        per = max(1, -(-gpus // hosts))
        if per > MAX_GPUS_PER_HOST:
            raise SystemExit(f"--hosts {hosts}: {per} GPUs a host; at most {MAX_GPUS_PER_HOST}")
        return [{"gpus": per, "cpu": 8.0 * per, "memory_mib": 65536 * per}] * hosts, "even"
    if (trace / "openb_node_list_gpu_node.csv").exists():
        from crucible.sim.trace import load_nodes, replicate

        nodes = replicate(load_nodes(trace, gpu_only=True), gpus)
        shapes = [
            {
                "gpus": min(n.gpu_count, MAX_GPUS_PER_HOST),
                "cpu": max(1.0, n.cpu_milli / 1000),
                "memory_mib": max(1024, n.memory_mib),
            }
            for n in nodes
            if n.gpu_count > 0
        ]
        return shapes, "openb"
    print(f"(no openb trace at {trace}: a generated fleet of 8-GPU nodes)", file=sys.stderr)
    n = -(-gpus // 8)
    return [{"gpus": 8, "cpu": 96.0, "memory_mib": 1 << 20}] * n, "generated"


def workload(n: int, run_s: float, trace: Path, seed: int) -> tuple[list[tuple[int, float]], str]:
    """``n`` (GPU count, run seconds) pods: the openb pod list's GPU pods (cycled), their
    lifetimes scaled so the median is ``run_s``; without the trace, 1/2/4/8 GPUs and
    exponential lifetimes."""
    rng = random.Random(seed)
    if (trace / "openb_pod_list_default.csv").exists():
        from crucible.sim.trace import load_pods

        pods = [p for p in load_pods(trace) if p.request.num_gpu > 0]
        lives = [
            float(p.deletion_time - p.creation_time)
            for p in pods
            if p.deletion_time is not None and p.deletion_time > p.creation_time
        ]
        scale = run_s / statistics.median(lives) if lives else 1.0
        out = []
        for i in range(n):
            p = pods[i % len(pods)]
            life = rng.choice(lives) * scale if lives else run_s
            out.append((min(p.request.num_gpu, 8), min(max(life, 0.2), 30 * run_s)))
        return out, "openb"
    return [
        (rng.choice((1, 1, 1, 2, 4, 8)), max(0.2, rng.expovariate(1 / run_s))) for _ in range(n)
    ], "generated"


# -- emulated agents (one process holds many hosts) ----------------------------------------------
class Host:
    def __init__(self, name: str, shape: dict[str, Any], model: str, energy: bool) -> None:
        self.name = name
        self.shape = shape
        self.model = model
        self.energy = energy
        self.id: str | None = None
        self.seq = 0
        self.running: dict[str, float] = {}  # container id -> exit time (monotonic)
        self.exited: list[str] = []  # reported exits not yet answered with 200
        self.started: dict[str, tuple[float, int]] = {}  # container id -> (start, GPUs)
        self.final_mwh: dict[str, int] = {}  # an exited container's energy, frozen

    def start(self, cid: str, now: float, run_s: float, gpus: int) -> None:
        self.running[cid] = now + run_s
        self.started[cid] = (now, gpus)

    def end(self, cid: str, now: float) -> None:
        """The container exits (its time is up, or the server stopped it)."""
        if self.running.pop(cid, None) is not None:
            self.final_mwh[cid] = self.mwh(cid, now)
            self.exited.append(cid)

    def mwh(self, cid: str, now: float) -> int:
        if cid in self.final_mwh:
            return self.final_mwh[cid]
        start, gpus = self.started[cid]
        return int((now - start) * gpus * _GPU_WATTS / 3.6)  # W·s -> mWh

    def register_body(self) -> dict[str, Any]:
        gpus = [
            {
                "index": i,
                "model": self.model,
                "memory_mib": 81920,
                "uuid": f"GPU-{self.name}-{i}",
                "fake": True,
            }
            for i in range(self.shape["gpus"])
        ]
        inventory = {
            "cpu_cores": self.shape["cpu"],
            "memory_mib": self.shape["memory_mib"],
            "disk_mib": 1 << 22,
            "gpus": gpus,
        }
        return {
            "name": self.name,
            "inventory": inventory,
            "agent_version": "bench-fleet",
            # Fully isolated, as a host that takes any tenant's pods: the workload is spread
            # over several renter accounts (an account holds at most MAX_PODS pods).
            "isolation": FULL_ISOLATION,
        }

    def reports(self, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        for cid in [cid for cid, end in self.running.items() if end <= now]:
            self.end(cid, now)
        out: list[dict[str, Any]] = [{"container_id": c, "state": "running"} for c in self.running]
        out += [
            {"container_id": c, "state": "exited", "exit_code": 0, "reason": "exited"}
            for c in self.exited
        ]
        if self.energy:  # as the real agent (agent/energy.py): every tracked container's
            for r in out:  # energy so far, estimated for fake GPUs
                r["energy_mwh"] = self.mwh(r["container_id"], now)
                r["energy_estimated"] = True
        return out, list(self.exited)

    def forget(self, cid: str) -> None:
        """An exit the server has acknowledged."""
        self.exited.remove(cid)
        self.started.pop(cid, None)
        self.final_mwh.pop(cid, None)


async def run_host(
    client: httpx.AsyncClient, host: Host, stop: asyncio.Event, rec: dict[str, Any]
) -> None:
    for _ in range(20):
        try:
            r = await client.post("/v1/hosts/register", json=host.register_body())
        except httpx.HTTPError as exc:
            # As the real agent does: try again. (An exception here once ended the whole
            # emulator process, and its hundreds of hosts were then declared lost.)
            rec["errors"].append(f"register: {type(exc).__name__}")
            await asyncio.sleep(0.5)
            continue
        if r.status_code == 200:
            host.id = r.json()["id"]
            break
        rec["errors"].append(f"register {r.status_code}: {r.text[:200]}")
        await asyncio.sleep(0.5)
    else:
        return
    wait_s = 1.0
    while not stop.is_set():
        reports, sent_exits = host.reports(time.monotonic())
        host.seq += 1
        body = {"containers": reports, "wait_s": wait_s, "seq": host.seq}
        t0 = time.perf_counter()
        try:
            r = await client.post(f"/v1/hosts/{host.id}/sync", json=body)
        except httpx.HTTPError as exc:
            rec["errors"].append(f"sync: {type(exc).__name__}")
            await asyncio.sleep(0.5)
            continue
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            rec["errors"].append(f"sync {r.status_code}: {r.text[:200]}")
            await asyncio.sleep(0.5)
            continue
        rec["syncs"] += 1
        now_wall, now = time.time(), time.monotonic()
        for cid in sent_exits:
            host.forget(cid)
        reply = r.json()
        wait_s = float(reply.get("heartbeat_interval_s", 1.0))
        if reply["start"]:
            rec["early_sync_s"].append(dt)
        for a in reply["start"]:
            pod = a.get("pod") or {}
            run_s = float((pod.get("env") or {}).get("BENCH_RUN_S", "1"))
            gpus = sum(int(g["count"]) for g in a["resources"].get("gpus") or [])
            host.start(a["container_id"], now, run_s, gpus)
            rec["assigned"].append([pod.get("name", a["container_id"]), now_wall])
        for cid in reply["stop"]:
            host.end(cid, now)


async def agents_main(cfg: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"syncs": 0, "errors": [], "assigned": [], "early_sync_s": []}
    urls: list[str] = cfg["urls"]
    headers = {"Authorization": f"Bearer {cfg['token']}"}
    hosts = [Host(h["name"], h["shape"], cfg["model"], cfg["energy"]) for h in cfg["hosts"]]
    # A client (its own connection) per host, as each real agent has: in one shared pool,
    # httpcore looks through every connection for each request, and with hundreds of hosts
    # that took 83% of this process's CPU, so that assignments waited for the emulator
    # (submit→assignment p50 5 s at 30 pods/s with the server half idle), not the exchange.
    clients = [
        httpx.AsyncClient(base_url=urls[i % len(urls)], headers=headers, timeout=120.0)
        for i in range(len(hosts))
    ]
    stop = asyncio.Event()
    stop_file = Path(cfg["stop_file"])

    async def watch() -> None:  # the driver creates the stop file when the run is over
        while not stop_file.exists():
            await asyncio.sleep(0.2)
        stop.set()

    await asyncio.gather(
        watch(), *(run_host(clients[i], h, stop, rec) for i, h in enumerate(hosts))
    )
    for c in clients:
        await c.aclose()
    rec["errors"] = rec["errors"][:50]
    return rec


# -- the client side -----------------------------------------------------------------------------
async def submit_and_probe(
    urls: list[str], tokens: list[str], pods: list[tuple[int, float]], args: argparse.Namespace
) -> dict[str, Any]:
    """Pod i is submitted (and probed) by renter ``i // PODS_PER_RENTER``."""
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    clients = [httpx.AsyncClient(base_url=u, timeout=60.0, limits=limits) for u in urls]

    def auth(i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[i // PODS_PER_RENTER]}"}

    submitted: dict[str, float] = {}
    submit_s: list[float] = []
    probe_s: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue[tuple[int, int, float] | None] = asyncio.Queue()
    start = time.perf_counter()

    async def feeder() -> None:
        for i, (gpus, run_s) in enumerate(pods):
            due = start + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await queue.put((i, gpus, run_s))
        for _ in range(args.concurrency):
            await queue.put(None)

    async def submitter() -> None:
        while (item := await queue.get()) is not None:
            i, gpus, run_s = item
            name = f"fleet-{i}"
            body = {
                "name": name,
                "gpu": f"{args.model}:{gpus}",
                "cpu": 1,
                "memory": "1GiB",
                "command": "true",
                "env": {"BENCH_RUN_S": f"{run_s:.3f}"},
            }
            t_wall, t0 = time.time(), time.perf_counter()
            try:
                r = await clients[i % len(clients)].post("/v1/pods", json=body, headers=auth(i))
            except httpx.HTTPError as exc:
                errors.append(f"submit: {type(exc).__name__}")
                continue
            submit_s.append(time.perf_counter() - t0)
            if r.status_code == 201:
                submitted[name] = t_wall
            elif len(errors) < 50:
                errors.append(f"submit {r.status_code}: {r.text[:200]}")

    async def prober() -> None:
        k = 0
        while time.perf_counter() - start < args.duration:
            await asyncio.sleep(1 / args.probe_rate)
            if not submitted:
                continue
            i = k % max(1, len(submitted))
            name = f"fleet-{i}"
            k += 1
            t0 = time.perf_counter()
            try:
                r = await clients[k % len(clients)].get(f"/v1/pods/{name}", headers=auth(i))
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                probe_s.append(time.perf_counter() - t0)

    await asyncio.gather(feeder(), prober(), *(submitter() for _ in range(args.concurrency)))
    window = time.perf_counter() - start
    for c in clients:
        await c.aclose()
    return {
        "submitted": submitted,
        "submit_s": submit_s,
        "probe_s": probe_s,
        "errors": errors,
        "window_s": window,
    }


# -- the database --------------------------------------------------------------------------------
def db_bytes(url: str) -> int:
    """The store's size on disk: the SQLite file and its WAL, or pg_database_size."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    import psycopg

    with psycopg.connect(_pg_plain(url)) as conn:
        row = conn.execute("select pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def _pg_plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far (Linux /proc;
    0 elsewhere). On a shared machine, the server's CPU per placement is a steadier figure
    than placements per wall-clock second."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


# -- the run -------------------------------------------------------------------------------------
def start_replicas(ex: LocalExchange, n: int) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    urls, procs = [ex.url], []
    for k in range(1, n):
        port = free_port()
        env = ex.process_env(ex.home)
        env.update(CRUCIBLE_DATABASE_URL=ex.database_url, CRUCIBLE_PORT=str(port))
        with open(ex.root / f"server-{k}.log", "ab") as log:
            procs.append(subprocess.Popen(ex.server_argv, env=env, stdout=log, stderr=log))
        url = f"http://127.0.0.1:{port}"

        def up(u: str = url) -> bool:
            try:
                return httpx.get(f"{u}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, f"replica {k} to answer /healthz")
        urls.append(url)
    return urls, procs


def run(args: argparse.Namespace) -> dict[str, Any]:
    shapes, fleet_src = fleet_shapes(args.gpus, args.hosts, args.trace)
    n_pods = int(args.rate * args.duration)
    pods, work_src = workload(n_pods, args.run_s, args.trace, args.seed)
    total_gpus = sum(s["gpus"] for s in shapes)
    print(
        f"fleet: {len(shapes):,} hosts, {total_gpus:,} GPUs ({fleet_src}); "
        f"workload: {n_pods:,} pods at {args.rate:g}/s for {args.duration:g} s ({work_src})",
        file=sys.stderr,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    scratch = scratch_database(args.database_url) if args.database_url else None
    db_url = scratch[0] if scratch else None
    env = {
        "CRUCIBLE_SCHEDULER_INTERVAL_S": str(args.scheduler_interval),
        "CRUCIBLE_HOST_TIMEOUT_S": "60",
        "CRUCIBLE_LOG_LEVEL": "warning",
        "CRUCIBLE_HEARTBEAT_INTERVAL_S": str(args.heartbeat),
    }
    ex = LocalExchange(tmp, db_url, env=env)
    agent_procs: list[subprocess.Popen[bytes]] = []
    replica_procs: list[subprocess.Popen[bytes]] = []
    try:
        ex.start_server()
        urls, replica_procs = start_replicas(ex, args.replicas)
        host_token = ex.host_token
        renters = [
            ex.new_account(f"bench-fleet-{k}")
            for k in range(max(1, -(-len(pods) // PODS_PER_RENTER)))
        ]
        store_url = ex.database_url
        stop_file = tmp / "stop"
        per = -(-len(shapes) // args.agent_procs)
        for k in range(args.agent_procs):
            chunk = shapes[k * per : (k + 1) * per]
            cfg = {
                "urls": urls,
                "token": host_token,
                "model": args.model,
                "energy": not args.no_energy,
                "stop_file": str(stop_file),
                "hosts": [{"name": f"h{k}-{i}", "shape": s} for i, s in enumerate(chunk)],
            }
            path = tmp / f"agents-{k}.json"
            path.write_text(json.dumps(cfg))
            agent_procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--agents", str(path)],
                    stdout=subprocess.DEVNULL,
                )
            )

        admin_token = (ex.home / "admin-token").read_text().strip()

        def all_ready() -> bool:
            # The hosts' count by state from /metrics, twice a second: listing thousands of
            # hosts 20 times a second (GET /v1/hosts) was most of what the server did while
            # the fleet registered.
            time.sleep(0.5)
            try:
                r = httpx.get(
                    f"{ex.url}/metrics",
                    headers={"Authorization": f"Bearer {admin_token}"},
                    timeout=60,
                )
            except httpx.HTTPError:
                return False
            for line in r.text.splitlines():
                if line.startswith('crucible_hosts{state="ready"}'):
                    return int(float(line.split()[-1])) >= len(shapes)
            return False

        t_reg = time.perf_counter()
        wait_for(all_ready, 60 + len(shapes), "every emulated host to register")
        reg_s = time.perf_counter() - t_reg
        server_pids = [p.pid for p in [ex.server, *replica_procs] if p is not None]
        t_run = time.perf_counter()
        cpu0 = cpu_s(server_pids)
        db0, t_db0 = db_bytes(store_url), time.perf_counter()
        out = asyncio.run(submit_and_probe(urls, renters, pods, args))
        time.sleep(args.drain)
        db1, t_db1 = db_bytes(store_url), time.perf_counter()
        run_s = time.perf_counter() - t_run
        server_cpu_s = cpu_s(server_pids) - cpu0
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        stop_file.touch()
        for p in agent_procs:
            p.wait(timeout=args.heartbeat + 120)
        recs = [
            json.loads((tmp / f"agents-{k}.json.out").read_text()) for k in range(args.agent_procs)
        ]
    finally:
        for p in agent_procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
        for p in replica_procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
        ex.close()
        if args.database_url and scratch:
            drop_database(args.database_url, scratch[1])
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)

    submitted: dict[str, float] = out["submitted"]
    latency, assigned_at = [], []
    for rec in recs:
        for name, t in rec["assigned"]:
            if name in submitted:
                latency.append(t - submitted[name])
                assigned_at.append(t)
    first = min(submitted.values()) if submitted else 0.0
    span = (max(assigned_at) - first) if assigned_at else 0.0
    syncs = sum(r["syncs"] for r in recs)
    result = {
        "fleet": {
            "hosts": len(shapes),
            "gpus": total_gpus,
            "source": fleet_src,
            "replicas": args.replicas,
            "database": "postgresql" if args.database_url else "sqlite",
        },
        "workload": {"pods": n_pods, "rate": args.rate, "source": work_src},
        "registration_s": round(reg_s, 2),
        "registrations_per_s": round(len(shapes) / reg_s, 1),
        "submitted": len(submitted),
        "assigned": len(latency),
        "placements_per_s": round(len(latency) / span, 1) if span else 0.0,
        "submit_to_assignment": summarize_ms(latency),
        "api_submit": summarize_ms(out["submit_s"]),
        "api_probe_get_pod": summarize_ms(out["probe_s"]),
        "sync_with_work": summarize_ms([s for r in recs for s in r["early_sync_s"]]),
        "syncs_per_s": round(syncs / run_s, 1),
        # The server process(es)' CPU over the run (submits, syncs, ticks), per placement:
        # what the wall-clock figures would be on an otherwise idle machine's one core.
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_ms_per_placement": (
            round(server_cpu_s * 1000 / len(latency), 2) if latency else None
        ),
        "run_s": round(run_s, 2),
        "load_average_1m": None if load is None else round(load, 2),
        "db_bytes_start": db0,
        "db_bytes_end": db1,
        "db_bytes_per_hour": round((db1 - db0) / (t_db1 - t_db0) * 3600),
        "errors": (out["errors"] + [e for r in recs for e in r["errors"]])[:20],
        "goal": "≥ 2,000 placements/s at 100,000 GPUs with p99 submit→assignment < 1 s",
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_info(),
    }
    return result


def report(r: dict[str, Any]) -> None:
    f, s2a = r["fleet"], r["submit_to_assignment"]
    rows = [
        ["fleet", f"{f['hosts']:,} hosts, {f['gpus']:,} GPUs ({f['source']}), {f['database']}"
         f", {f['replicas']} server(s)"],
        ["registration", f"{r['registration_s']:,} s ({r['registrations_per_s']:,} hosts/s)"],
        ["submitted / assigned", f"{r['submitted']:,} / {r['assigned']:,}"],
        ["placements/s (end to end)", f"{r['placements_per_s']:,}"],
        ["submit→assignment p50 / p99", f"{s2a['p50_ms']:,.0f} / {s2a['p99_ms']:,.0f} ms"],
        ["POST /v1/pods p50 / p99",
         f"{r['api_submit']['p50_ms']:,.0f} / {r['api_submit']['p99_ms']:,.0f} ms"],
        ["GET /v1/pods/{name} p50 / p99",
         f"{r['api_probe_get_pod']['p50_ms']:,.0f} / {r['api_probe_get_pod']['p99_ms']:,.0f} ms"],
        ["syncs/s (hosts' load)", f"{r['syncs_per_s']:,}"],
        ["server CPU per placement", f"{r['server_cpu_ms_per_placement'] or 0:,.2f} ms"
         f" ({r['server_cpu_s']:,} s over {r['run_s']:,} s)"],
        ["machine load (1 min)", f"{r['load_average_1m']}"],
        ["database growth", f"{r['db_bytes_per_hour'] / 2**20:,.1f} MiB/hour"],
        ["errors", str(len(r["errors"]))],
    ]  # fmt: skip
    print_table("Fleet emulator", ["figure", "value"], rows)
    for e in r["errors"][:5]:
        print(f"  error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=None, help="spread the GPUs over N hosts")
    ap.add_argument("--duration", type=float, default=60.0, help="submit window, seconds")
    ap.add_argument("--rate", type=float, default=2000.0, help="pods submitted per second")
    ap.add_argument("--run-s", type=float, default=10.0, help="median pod run time, seconds")
    ap.add_argument("--drain", type=float, default=5.0, help="seconds after the window")
    ap.add_argument("--database-url", default=None, help="PostgreSQL server (default SQLite)")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--agent-procs", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=32, help="submits in flight")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="GET probes per second")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="hosts' sync interval, s")
    ap.add_argument("--scheduler-interval", type=float, default=0.1)
    ap.add_argument("--model", default="H100", help="the fake GPUs' catalog model")
    ap.add_argument(
        "--no-energy",
        action="store_true",
        help="hosts report no energy figures (the real agent reports them on every sync)",
    )
    ap.add_argument("--trace", type=Path, default=default_trace())
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="a small run (< 1 min)")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory")
    ap.add_argument("--out", type=Path, default=None, help="results JSON path")
    ap.add_argument("--agents", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agents:  # an emulated-agents process
        cfg = json.loads(args.agents.read_text())
        rec = asyncio.run(agents_main(cfg))
        Path(f"{args.agents}.out").write_text(json.dumps(rec))
        return
    if args.quick:
        args.gpus, args.hosts = 400, args.hosts or 50
        args.duration, args.rate, args.run_s, args.drain = 10.0, 20.0, 2.0, 3.0
        args.agent_procs = 1
    for flag in ("gpus", "rate", "heartbeat", "duration", "replicas", "agent_procs", "concurrency"):
        if getattr(args, flag) <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be positive")
    result = run(args)
    report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    else:
        print(f"wrote {write_results('bench_fleet', result)}")


if __name__ == "__main__":
    main()
