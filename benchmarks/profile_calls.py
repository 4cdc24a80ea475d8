"""Where the time of a call goes: py-spy on the server, agent and container processes and
cProfile on the SDK side, while a workload of bench_calls runs.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_calls.py --workload roundtrip --seconds 15
    .venv/bin/python benchmarks/profile_calls.py --workload map --seconds 15

Writes py-spy's collapsed stacks (``--format raw``; feed them to flamegraph.pl or
speedscope) and a summary of the hottest functions (self and inclusive share of samples) to
benchmarks/results/profile/<workload>-<process>.txt, and prints the summary.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_app  # noqa: E402
from _exchange import RESULTS, CpuMeter, Exchange  # noqa: E402

OUT = RESULTS / "profile"


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return exe


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
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
        for f in set(frames):
            incl_c[f] += n
    out = io.StringIO()
    out.write(f"{total} samples\n\nself %   function (file:line)\n")
    for f, n in self_c.most_common(top):
        out.write(f"{100 * n / max(total, 1):6.1f}   {f}\n")
    out.write("\ninclusive %   function\n")
    for f, n in incl_c.most_common(top * 2):
        out.write(f"{100 * n / max(total, 1):6.1f}   {f}\n")
    return out.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", choices=("roundtrip", "map"), default="roundtrip")
    p.add_argument("--seconds", type=float, default=15.0, help="profiled time")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--map-n", type=int, default=50_000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    exe = py_spy()
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(kv.split("=", 1) for kv in a.env)
    with Exchange(env) as ex:
        client = ex.client()
        with _bench_app.app.run(client=client):
            # warm: a container up, code cached, connections open
            for _ in range(100):
                _bench_app.noop.remote()
            if a.workload == "map":
                list(_bench_app.ident.map(range(5000)))
            targets = {"server": ex.server.pid, "agent": ex.agent.pid}  # type: ignore[union-attr]
            for i, pid in enumerate(ex.workers()[:4]):
                targets[f"worker{i}"] = pid
            spies = {}
            for name, pid in targets.items():
                raw = OUT / f"{a.workload}-{name}.raw"
                spies[name] = (
                    raw,
                    subprocess.Popen(
                        [exe, "record", "--pid", str(pid), "--rate", str(a.rate), "--duration",
                         str(int(a.seconds)), "--format", "raw", "--nonblocking", "--output",
                         str(raw)],
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
    print(f"{a.workload}: {count} calls in {cpu.wall_s:.1f} s "
          f"({count / cpu.wall_s:,.0f}/s, under profilers); CPU s: {cpu.result}")
    for name, (raw, proc) in spies.items():
        if not raw.exists():
            print(f"\n== {name}: no profile ({proc.stderr.read().decode()[-300:] if proc.stderr else ''})")
            continue
        text = summarize(raw, a.top)
        (OUT / f"{a.workload}-{name}.txt").write_text(text)
        print(f"\n== {name} (py-spy, on-CPU samples)\n{text}")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(a.top)
    (OUT / f"{a.workload}-sdk.txt").write_text(s.getvalue())
    print(f"\n== sdk (cProfile, tottime)\n{s.getvalue()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
