"""Benchmark plumbing: a throwaway exchange, process probes, a table printer, JSON results.

:class:`Exchange` starts ``crucible server`` and ``crucible agent`` as subprocesses on
loopback, in a temporary CRUCIBLE_HOME with a free port (the pattern of tests/harness.py),
with the product's default settings unless ``env`` overrides some. Nothing here is timed.

A benchmark that imports this module ends on SIGTERM (``kill``, a CI timeout, a supervisor)
as it does on Ctrl-C: its ``finally`` blocks and context managers run and stop the servers,
agents and balancers it started, instead of leaving them running without a parent. The
processes it starts import the same source as the benchmark (its ``src`` first on
PYTHONPATH), so a benchmark run from a snapshot of an older commit measures that commit's
exchange.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible.sdk._client import Client
from crucible.testing import LocalExchange, Replica, start_haproxy, wait_for

__all__ = [
    "CpuMeter",
    "Exchange",
    "cpu_seconds",
    "drop_database",
    "machine_info",
    "percentile",
    "print_table",
    "rss_kib",
    "scratch_database",
    "summarize_ms",
    "wait_quiet",
    "write_results",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: every cleanup on the way runs


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

# The exchange's processes (servers, agents, workers) import the source this benchmark runs
# from, as the benchmark does: run from a snapshot of another commit, the whole exchange is
# that commit's, not the ``crucible`` the virtual environment installed.
_SRC = str(REPO / "src")
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != _SRC:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p
    )


# -- /proc probes ------------------------------------------------------------------------------
def rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    """Resident set size (or VmHWM, the peak) of a process in KiB, from /proc/PID/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


# -- the exchange ------------------------------------------------------------------------------
def scratch_database(admin_url: str) -> tuple[str, str]:
    """A fresh database on the PostgreSQL server of ``admin_url`` (postgresql://...): its
    store URL and its name (for :func:`drop_database`). A benchmark run never finds an
    earlier run's rows."""
    import psycopg

    admin = admin_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"crucible_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://"), name


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database made by :func:`scratch_database` (its connections closed first)."""
    import psycopg

    admin = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Exchange(LocalExchange):
    """A control plane and one agent (host ``bench-host``) as subprocesses, in a temporary
    directory removed on close unless ``keep`` (or the run failed).

    Use as a context manager; ``client()`` gives an SDK client of a fresh builder account.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        keep: bool = False,
        probe: bool = False,
        *,
        postgres_url: str | None = None,
        replicas: int = 1,
        fake_gpus: str | None = None,
    ) -> None:
        """``postgres_url``: a PostgreSQL server (an admin URL, postgresql://...) on which a
        fresh database is made for this exchange and dropped on close; ``replicas`` > 1
        (needs it): that many servers behind haproxy, the agent and clients on its URL."""
        root = Path(tempfile.mkdtemp(prefix="crucible-bench-"))
        self.replica_count = replicas
        self.replicas: list[Replica] = []
        self.balancer: subprocess.Popen[bytes] | None = None
        self._pg_admin: str | None = None
        self._pg_db: str | None = None
        database_url = None
        if postgres_url:
            self._pg_admin = postgres_url
            database_url, self._pg_db = scratch_database(postgres_url)
        elif replicas > 1:
            raise SystemExit("--replicas needs PostgreSQL: pass --postgres-url")
        # probe: run the server under _server_probe.py (request and SQL statement counters)
        self.probe_out = root / "server-probe.json" if probe else None
        env = dict(env or {})
        argv = None
        if self.probe_out is not None:
            env["CRUCIBLE_BENCH_PROBE_OUT"] = str(self.probe_out)
            argv = [sys.executable, str(BENCH_DIR / "_server_probe.py"), "server"]
        super().__init__(root, database_url, env=env, server_argv=argv)
        self.db_path = root / "store.db"
        self.keep = keep
        self.fake_gpus = fake_gpus  # the agent declares these ("1xH200"); None: real NVML
        self.account_id: str | None = None

    @property
    def agent(self) -> subprocess.Popen[bytes] | None:
        return self.agents.get("bench-host")

    def __enter__(self) -> Exchange:
        try:
            self.start_server()
            if self.replica_count > 1:
                self.replicas = [self.start_replica(i) for i in range(1, self.replica_count)]
                ports = [self.port, *(r.port for r in self.replicas)]
                self.balancer, self.url = start_haproxy(self.root, ports)
            self.start_agent("bench-host", fake_gpus=self.fake_gpus)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # keep the logs of a failed run
            self.keep = True
            codes = {
                name: (p.poll() if p is not None else None)
                for name, p in (("server", self.server), ("agent", self.agent))
            }
            print(f"exchange failed; exit codes {codes}; logs kept in {self.root}", file=sys.stderr)
        self.close()

    def close(self) -> None:
        super().close()
        for r in self.replicas:
            r.stop()
        if self.balancer is not None:
            self.balancer.terminate()
            self.balancer.wait(10)
            self.balancer = None
        if self._pg_admin is not None and self._pg_db is not None:
            drop_database(self._pg_admin, self._pg_db)
            self._pg_db = None
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def client(self) -> Client:  # type: ignore[override]
        """An SDK client of the account that owns the bench host (its id in
        ``self.account_id``): the host runs the process runtime, which runs only its
        owner's code."""
        token = self.owner_token(f"bench-{uuid.uuid4().hex[:8]}")
        client = Client(self.url, token)
        self.account_id = str(client.transport.get("/v1/accounts/me")["id"])
        return client

    def probe_reset(self) -> None:
        assert self.server is not None and self.probe_out is not None
        self.server.send_signal(signal.SIGUSR2)
        time.sleep(0.2)

    def probe_read(self) -> dict[str, Any]:
        """The server probe's counters (see _server_probe.py)."""
        assert self.server is not None and self.probe_out is not None
        self.probe_out.unlink(missing_ok=True)
        self.server.send_signal(signal.SIGUSR1)
        wait_for(self.probe_out.exists, 10, "the server probe's counters")
        return dict(json.loads(self.probe_out.read_text()))

    # -- processes ------------------------------------------------------------------------------
    def workers(self) -> list[int]:
        """PIDs of the container processes (children of the agent)."""
        return children_of(self.agent.pid) if self.agent is not None else []

    def pids(self) -> dict[str, list[int]]:
        return {
            "server": [self.server.pid] if self.server else [],
            "agent": [self.agent.pid] if self.agent else [],
            "workers": self.workers(),
        }

    def wait_workers(self, count: int = 0, timeout_s: float = 20) -> bool:
        """Wait until at most ``count`` container processes remain; False on timeout."""
        try:
            wait_for(lambda: len(self.workers()) <= count, timeout_s, "containers to stop")
            return True
        except AssertionError:
            return False


def descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (children, grandchildren, ...)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def machine_seconds() -> dict[str, float]:
    """CPU seconds of all cores since boot, from /proc/stat: ``proc`` (user + nice + system:
    time that processes' utime/stime account for), ``irq`` (hard and soft interrupts, e.g.
    loopback TCP processing, not charged to any process) and ``steal`` (the hypervisor ran
    something else while this VM wanted the core)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    f += [0] * (8 - len(f))
    return {
        "proc": (f[0] + f[1] + f[2]) / _CLK_TCK,
        "irq": (f[5] + f[6]) / _CLK_TCK,
        "steal": f[7] / _CLK_TCK,
    }


class CpuMeter:
    """CPU seconds used over a block: by this process (``sdk``), by the exchange's server,
    agent and workers when ``ex`` is given, by all our descendants together (``tree``: the
    exchange, or Ray's raylet, GCS and workers), by all processes on the machine
    (``machine``), ``other`` = machine - sdk - tree: the load other people put on the machine
    meanwhile (an estimate: a process that exits inside the block is not counted as ours),
    plus ``irq`` (interrupt time, charged to no process) and ``steal`` (the hypervisor)."""

    def __init__(self, ex: Exchange | None = None) -> None:
        self.ex = ex
        self.result: dict[str, float] = {}
        self.wall_s = 0.0

    def _sample(self) -> tuple[dict[str, dict[int, float]], dict[str, float], float]:
        out: dict[str, dict[int, float]] = {"sdk": {os.getpid(): _self_cpu()}}
        if self.ex is not None:
            for role, pids in self.ex.pids().items():
                out[role] = {p: cpu_seconds(p) for p in pids}
        out["tree"] = {p: cpu_seconds(p) for p in descendants(os.getpid())}
        return out, machine_seconds(), time.perf_counter()

    def __enter__(self) -> CpuMeter:
        self._before = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        after, busy, wall = self._sample()
        before, busy0, wall0 = self._before
        for role, now in after.items():
            prev = before.get(role, {})
            self.result[role] = round(sum(v - prev.get(p, 0.0) for p, v in now.items()), 3)
        self.result["machine"] = round(busy["proc"] - busy0["proc"], 3)
        self.result["irq"] = round(busy["irq"] - busy0["irq"], 3)
        self.result["steal"] = round(busy["steal"] - busy0["steal"], 3)
        self.result["other"] = round(
            max(0.0, self.result["machine"] - self.result["sdk"] - self.result["tree"]), 3
        )
        self.wall_s = wall - wall0
        self.result["wall"] = round(self.wall_s, 3)


def wait_quiet(max_wait_s: float, threshold: float = 0.15) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until other people's load on the machine, measured over
    1 s as cores busy with processes not ours, is below ``threshold`` cores. Returns the last
    measurement and how long it waited. Our own idle exchange counts as ours."""
    start = time.perf_counter()
    while True:
        with CpuMeter() as cpu:
            time.sleep(1.0)
        other = cpu.result["other"] / max(cpu.wall_s, 1e-3)
        waited = time.perf_counter() - start
        if other < threshold or waited >= max_wait_s:
            return {"other_cores": round(other, 2), "waited_s": round(waited, 1)}


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- statistics, tables, results ---------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else float("nan"),
        "min_ms": round(min(ms), 3) if ms else float("nan"),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(line)
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print(line)
    print(line, flush=True)


def _git(*args: str, cwd: Path = REPO) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:
        return ""


def _crucible_source() -> Path:
    """The source tree whose ``crucible`` package this process (and so the exchange's
    processes) imports: the repo, or a snapshot put first on PYTHONPATH."""
    import crucible

    return Path(crucible.__file__).resolve().parents[2]


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "crucible_source": str(src := _crucible_source()),
        "git_commit": _git("rev-parse", "HEAD", cwd=src),
        "git_dirty_src": bool(_git("status", "--porcelain", "--", "src", cwd=src)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    try:
        from importlib.metadata import version

        info["crucible_version"] = version("crucible")
    except Exception:
        info["crucible_version"] = "unknown"
    return info


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path
