"""Where the time of a call goes: py-spy on the server, agent and container processes and
cProfile on the SDK side, while a workload of bench_calls runs.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_calls.py --workload roundtrip --seconds 15
    .venv/bin/python benchmarks/profile_calls.py --workload map --seconds 15
    .venv/bin/python benchmarks/profile_calls.py --workload roundtrip \
        --postgres-url postgresql://postgres@127.0.0.1:54329/postgres --replicas 2

Writes py-spy's collapsed stacks (``--format raw``; feed them to flamegraph.pl or
speedscope) and a summary of the hottest functions (self and inclusive share of samples) to
benchmarks/results/profile/<workload>[-<store>]-<process>.txt (store: ``pg`` on PostgreSQL,
``pgN`` with N replicas behind haproxy, each replica profiled as ``replicaI``), and prints
the summary.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_app
from _exchange import RESULTS, CpuMeter, Exchange, cpu_seconds, print_table

OUT = RESULTS / "profile"


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return exe


CATEGORIES = (
    ("sqlalchemy", "sqlalchemy/"),
    ("pydantic", "pydantic"),
    ("fastapi/starlette", ("fastapi/", "starlette/")),
    ("uvicorn", "uvicorn/"),
    ("asyncio/uvloop", ("asyncio/", "uvloop")),
    ("http.client/socket", ("http/client.py", "socket.py")),
    ("json", ("json/", "orjson")),
    ("cloudpickle/pickle", ("cloudpickle", "pickle")),
    ("crucible", "crucible/"),
)


def category(frame: str) -> str:
    for name, spec in CATEGORIES:
        needles = (spec,) if isinstance(spec, str) else spec
        if any(n in frame for n in needles):
            return name
    return "other"


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    cat_c: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # the first frame is the thread ("process 123:..." / "thread (0x...)") when present
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        cat_c[category(frames[-1])] += n
        for f in set(frames):
            incl_c[f] += n
    out = io.StringIO()
    out.write(f"{total} samples\n\nself %   by library (where the sampled frame's code lives)\n")
    for c, n in cat_c.most_common():
        out.write(f"{100 * n / max(total, 1):6.1f}   {c}\n")
    out.write("\nself %   function (file:line)\n")
    for f, n in self_c.most_common(top):
        out.write(f"{100 * n / max(total, 1):6.1f}   {f}\n")
    out.write("\ninclusive %   function (crucible's own code)\n")
    for f, n in [x for x in incl_c.most_common() if "crucible/" in x[0]][:top]:
        out.write(f"{100 * n / max(total, 1):6.1f}   {f}\n")
    out.write("\ninclusive %   function (libraries)\n")
    shown = 0
    for f, n in incl_c.most_common():
        if "crucible/" in f or n == total:
            continue  # our own code is above; frames in every sample (main, run) say nothing
        out.write(f"{100 * n / max(total, 1):6.1f}   {f}\n")
        shown += 1
        if shown >= top:
            break
    return out.getvalue()


def server_cpu_per_op(ex: Exchange, client: object, n: int) -> list[tuple[str, float, float]]:
    """(operation, server CPU ms per request, wall ms per request) for single API requests,
    sequential, on a warm exchange: what each piece of the call path costs the server."""
    from crucible.sdk._client import Client

    assert isinstance(client, Client) and ex.server is not None
    t = client.transport
    fn = _bench_app.noop
    call_id = fn.spawn().object_id
    fn.remote()
    ops: dict[str, Callable[[], object]] = {
        "GET /healthz (no auth, no DB)": lambda: t.request_raw("GET", "/healthz"),
        "GET /v1/calls/{id} (auth + 1 SELECT)": lambda: t.request_raw(
            "GET", f"/v1/calls/{call_id}"
        ),
        "GET /v1/calls?limit=20": lambda: t.request_raw("GET", "/v1/calls?limit=20"),
        "spawn: POST /v1/functions/{id}/calls, no wait (+ the worker runs it)": lambda: fn.spawn(),
        "remote: the whole round trip": lambda: fn.remote(),
    }
    out = []
    for name, op in ops.items():
        for _ in range(20):
            op()
        time.sleep(0.5)  # let spawned calls drain
        before = cpu_seconds(ex.server.pid)
        start = time.perf_counter()
        for _ in range(n):
            op()
        wall = time.perf_counter() - start
        time.sleep(0.5)
        out.append((name, (cpu_seconds(ex.server.pid) - before) / n * 1000, wall / n * 1000))
    return out


def sql_per_call(ex: Exchange, map_n: int) -> None:
    """HTTP requests and SQL statements the server handles per call: .remote() and .map."""
    for label, n, run, per in (
        ("remote", 1000, lambda: [_bench_app.noop.remote() for _ in range(1000)], 1),
        ("map", map_n, lambda: list(_bench_app.ident.map(range(map_n))), 1000),
    ):
        unit = "per call" if per == 1 else f"per {per:,} inputs"
        time.sleep(1.0)
        ex.probe_reset()
        with CpuMeter(ex) as cpu:
            run()
        time.sleep(0.3)
        data = ex.probe_read()
        assert ex.probe_out is not None
        pstats_path = Path(str(ex.probe_out) + ".pstats")
        if pstats_path.exists():
            buf = io.StringIO()
            st = pstats.Stats(str(pstats_path), stream=buf)
            st.sort_stats("tottime").print_stats(30)
            st.sort_stats("cumulative").print_stats(60)
            (OUT / f"sql-{label}-server-cprofile.txt").write_text(buf.getvalue())
            print(f"server cProfile written to {OUT / f'sql-{label}-server-cprofile.txt'}")
        print(
            f"\n== {label}: {n:,} calls in {cpu.wall_s:.2f} s, server CPU "
            f"{cpu.result['server'] / n * 1000:.3f} ms per call"
        )
        k = per / n
        rows = []
        for route, (count, _wall) in sorted(data["requests"].items(), key=lambda x: -x[1][0]):
            st = data["statements_by_route"].get(route, [0, 0.0])
            rows.append((route, f"{count * k:.3f}", f"{st[0] * k:.2f}", f"{st[1] * k * 1000:.3f}"))
        st = data["statements_by_route"].get("background", [0, 0.0])
        rows.append(
            ("(background: scheduler loop)", "", f"{st[0] * k:.2f}", f"{st[1] * k * 1000:.3f}")
        )
        print_table(
            f"{label}: {unit}", ["route", "requests", "SQL statements", "SQL cursor ms"], rows
        )
        rows = [
            (sql, f"{c * k:.2f}", f"{t * k * 1000:.3f}", "")
            for sql, (c, t) in sorted(data["statements"].items(), key=lambda x: -x[1][0])[:25]
        ]
        print_table(f"{label}: statements {unit}", ["statement", "count", "cursor ms", ""], rows)
        (OUT / f"sql-{label}.json").write_text(json.dumps(data, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--workload",
        choices=("roundtrip", "map", "ops", "sql"),
        default="roundtrip",
        help="ops: server CPU per API request type; sql: HTTP requests and SQL "
        "statements per call (server run under _server_probe.py); neither uses py-spy",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="profiled time")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--map-n", type=int, default=50_000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--cprofile",
        action="store_true",
        help="with --workload sql: also cProfile the server's event loop thread",
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--postgres-url",
        metavar="URL",
        help="the exchange on a fresh database of this PostgreSQL server (default: SQLite)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="N `crucible server` replicas behind haproxy (needs --postgres-url)",
    )
    a = p.parse_args()
    tag = a.workload
    if a.postgres_url:
        tag += "-pg" + (str(a.replicas) if a.replicas > 1 else "")
    exe = py_spy()
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(kv.split("=", 1) for kv in a.env)
    if a.workload == "sql" and a.cprofile:
        env["CRUCIBLE_BENCH_PROBE_CPROFILE"] = "1"
    with Exchange(
        env, probe=a.workload == "sql", postgres_url=a.postgres_url, replicas=a.replicas
    ) as ex:
        client = ex.client()
        with _bench_app.app.run(client=client):
            # warm: a container up, code cached, connections open
            for _ in range(100):
                _bench_app.noop.remote()
            if a.workload == "ops":
                rows = server_cpu_per_op(ex, client, 1000)
                print_table(
                    "server CPU and wall time per request (ms), sequential",
                    ["operation", "server CPU", "wall"],
                    [(n, f"{c:.3f}", f"{w:.3f}") for n, c, w in rows],
                )
                return 0
            if a.workload == "sql":
                sql_per_call(ex, a.map_n)
                return 0
            if a.workload == "map":
                list(_bench_app.ident.map(range(5000)))
            targets = {"server": ex.server.pid, "agent": ex.agent.pid}  # type: ignore[union-attr]
            for r in ex.replicas:
                targets[f"replica{r.index}"] = r.proc.pid
            for i, pid in enumerate(ex.workers()[:4]):
                targets[f"worker{i}"] = pid
            spies = {}
            for name, pid in targets.items():
                raw = OUT / f"{tag}-{name}.raw"
                spies[name] = (
                    raw,
                    subprocess.Popen(
                        [
                            exe,
                            "record",
                            "--pid",
                            str(pid),
                            "--rate",
                            str(a.rate),
                            "--duration",
                            str(int(a.seconds)),
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--function",
                            "--output",
                            str(raw),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                )
            time.sleep(1.0)  # py-spy attaches
            prof = cProfile.Profile()
            stop = threading.Event()
            threading.Timer(a.seconds - 1.5, stop.set).start()
            count = 0
            with CpuMeter(ex) as cpu:
                prof.enable()
                while not stop.is_set():
                    if a.workload == "roundtrip":
                        _bench_app.noop.remote()
                        count += 1
                    else:
                        count += sum(1 for _ in _bench_app.ident.map(range(a.map_n)))
                prof.disable()
            for _, proc in spies.values():
                proc.wait(timeout=a.seconds + 60)
        client.close()
    print(
        f"{a.workload}: {count} calls in {cpu.wall_s:.1f} s "
        f"({count / cpu.wall_s:,.0f}/s, under profilers); CPU s: {cpu.result}"
    )
    for name, (raw, proc) in spies.items():
        if not raw.exists():
            why = proc.stderr.read().decode()[-300:] if proc.stderr else ""
            print(f"\n== {name}: no profile ({why})")
            continue
        text = summarize(raw, a.top)
        (OUT / f"{tag}-{name}.txt").write_text(text)
        print(f"\n== {name} (py-spy, on-CPU samples)\n{text}")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(a.top)
    (OUT / f"{tag}-sdk.txt").write_text(s.getvalue())
    print(f"\n== sdk (cProfile, tottime)\n{s.getvalue()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
