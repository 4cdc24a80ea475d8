"""Cold starts on an image with torch preloaded, side by side in one run:

- **zygote fork** (Crucible's ``bwrap`` runtime): a function whose image preloads torch, each
  sample a new function (so a new container) forked from the warm zygote of (account, image),
  inside the sandbox. Two clocks: from the agent receiving the container's assignment
  ("container requested", the agent log's timestamp) to the function's first line running, and
  from the builder's ``.remote()`` (adds the server's scheduling and the agent's long poll);
- **fresh interpreter**: a new Python process of the same image that imports torch, from spawn
  to its first line after the import (no sandbox, so a lower bound for a fresh container);
- **Ray actor**: ``Actor.remote()`` to its first method running (Ray 2.x, local, no torch in its
  workers: Ray's own start-up only).

Also: the image build with uv, cold (empty caches) and cached, and the memory each warm zygote
holds (RSS and PSS from /proc/<pid>/smaps_rollup). Prints tables and writes
``benchmarks/results/bench_coldstart.json``. Usage::

    .venv/bin/python benchmarks/bench_coldstart.py             # 30 zygote samples
    .venv/bin/python benchmarks/bench_coldstart.py --quick     # 10

Torch comes from the index uv is configured with; on a machine with local wheels set
``UV_FIND_LINKS`` (this script sets it to /opt/wheels when that directory exists).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _coldstart_app as bench
from _exchange import Exchange, machine_info, print_table, summarize_ms, write_results

from crucible.agent.images import ImageCache

_LOG_LINE = re.compile(r"^(\S+ \S+) crucible\.agent starting container (\S+) ")


def _agent_starts(log: Path) -> dict[str, float]:
    """Container id → when the agent received its assignment (Unix time, ms resolution)."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if m:
            when = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out[m.group(2)] = when.timestamp()
    return out


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {
        "rss_kib": fields.get("Rss", 0),
        "pss_kib": fields.get("Pss", 0),
        "private_kib": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def _zygotes(root: Path) -> list[int]:
    """Zygote processes of this run: children of bwrap's init whose interpreter lives under
    ``root`` (their forked containers share the command line, but not the parent)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"crucible.worker.zygote" in cmd
            and cmd[0].startswith(str(root).encode())
            and parent[0].endswith(b"bwrap")
        ):
            pids.append(int(entry))
    return pids


def bench_build(images_dir: Path) -> dict[str, Any]:
    cache = ImageCache(images_dir)
    spec = bench.torch_image.spec()
    started = time.perf_counter()
    built = cache.ensure(spec, lambda sha: b"")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = cache.ensure(spec, lambda sha: b"")
    cached = time.perf_counter() - started
    assert not built.cached and again.cached
    return {
        "cold_s": round(cold, 2),
        "cached_ms": round(cached * 1000, 2),
        "size_mib": round(built.size_bytes / 2**20, 1),
        "python": str(built.python),
    }


def bench_zygote(ex: Exchange, samples: int) -> dict[str, Any]:
    client = ex.client()
    first: dict[str, Any] = {}
    e2e, agent_side, records = [], [], []
    for i in range(samples + 1):
        with bench.app.run(client=client):
            t0 = time.time()
            seen = bench.first_input.remote()
        starts = _agent_starts(ex.root / "agent-bench-host.log")
        requested = starts.get(seen["container"])
        rec = {**seen, "remote_s": seen["t"] - t0}
        if requested is not None:
            rec["agent_s"] = seen["t"] - requested
        if i == 0:  # the zygote's own start: it imports torch once per (account, image)
            first = rec
            continue
        records.append(rec)
        e2e.append(rec["remote_s"])
        if "agent_s" in rec:
            agent_side.append(rec["agent_s"])
    memory = {str(pid): _memory_kib(pid) for pid in _zygotes(ex.root)}
    return {
        "first_container_with_zygote_start": first,
        "agent_requested_to_first_input": summarize_ms(agent_side),
        "remote_to_first_input": summarize_ms(e2e),
        "all_preloaded": all(r["torch_preloaded"] for r in records),
        "zygote_memory": memory,
        "samples": records,
    }


def bench_fresh(python: str, samples: int) -> dict[str, Any]:
    code = "import time, torch; print(time.time())"
    times = []
    for _ in range(samples):
        t0 = time.time()
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip()) - t0)
    return summarize_ms(times)


def bench_ray(samples: int) -> dict[str, Any]:
    try:
        import ray
    except ImportError:
        return {"skipped": "ray is not installed"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0.1)
    class Probe:
        def first(self) -> float:
            return time.time()

    times = []
    try:
        for _ in range(samples):
            t0 = time.time()
            actor = Probe.remote()  # type: ignore[attr-defined]
            times.append(ray.get(actor.first.remote()) - t0)
            ray.kill(actor)
    finally:
        ray.shutdown()
    return {**summarize_ms(times), "version": ray.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    n = args.samples or (10 if args.quick else 30)
    if Path("/opt/wheels").is_dir():
        os.environ.setdefault("UV_FIND_LINKS", "/opt/wheels")
    results: dict[str, Any] = {"machine": machine_info(), "samples": n}
    ex = Exchange(env={"CRUCIBLE_RUNTIME": "bwrap", "CRUCIBLE_ZYGOTE_IDLE_S": "600"})
    try:
        # Build into the agent's own cache before it starts, so the exchange finds it built.
        results["build"] = bench_build(ex.root / "agent-bench-host" / "agent" / "images")
        print(f"image built: {results['build']}", flush=True)
        with ex:
            results["zygote"] = bench_zygote(ex, n)
            # The same image's interpreter, while the exchange (and its directory) exists.
            results["fresh_interpreter"] = bench_fresh(results["build"]["python"], max(5, n // 3))
    finally:
        ex.close()
    results["ray_actor"] = bench_ray(n)
    z, f, r = results["zygote"], results["fresh_interpreter"], results["ray_actor"]
    rows = [
        ["zygote fork, agent → first input", *_cells(z["agent_requested_to_first_input"])],
        ["zygote fork, .remote() → first input", *_cells(z["remote_to_first_input"])],
        ["fresh interpreter + import torch", *_cells(f)],
        [f"Ray actor start ({r.get('version', '-')}, no torch)", *_cells(r)],
    ]
    print_table("Cold start to first input (ms)", ["path", "n", "p50", "p99", "max"], rows)
    b = results["build"]
    mem = next(iter(z["zygote_memory"].values()), {})
    print_table(
        "Image with torch, and its zygote",
        ["what", "value"],
        [
            ["build, cold (empty uv cache)", f"{b['cold_s']} s"],
            ["build, cached", f"{b['cached_ms']} ms"],
            ["image size", f"{b['size_mib']} MiB"],
            [
                "first container incl. zygote start",
                f"{z['first_container_with_zygote_start'].get('agent_s', 0) * 1000:.0f} ms",
            ],
            [
                "warm zygote RSS / PSS",
                f"{mem.get('rss_kib', 0) / 1024:.0f} / {mem.get('pss_kib', 0) / 1024:.0f} MiB",
            ],
            ["torch imported before every first input", str(z["all_preloaded"])],
        ],
    )
    print(f"\nwrote {write_results('bench_coldstart', results)}")


def _cells(s: dict[str, Any]) -> list[Any]:
    if "p50_ms" not in s:
        return ["-", "-", "-", s.get("skipped", "-")]
    return [s["n"], f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}"]


if __name__ == "__main__":
    main()
