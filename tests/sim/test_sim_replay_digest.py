"""Placement replays are pinned: which task starts when, and on which nodes, under every
policy, for the shipped placement examples, the openb trace and a generated trace of large
gangs. The expected digests were computed with the engine before the driver learnt to skip
shapes it knows cannot fit (a speed-up that must not change a single decision)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from crucible.core.placement import FULL, POLICIES, Cluster, NodeSpec, Request
from crucible.sim import engine
from crucible.sim.events import EventQueue
from crucible.sim.metrics import Recorder
from crucible.sim.placement_driver import PlacementDriver
from crucible.sim.scenario import load_scenario
from crucible.sim.workload import Job

from harness import OPENB_TRACE

SIM = Path(__file__).resolve().parents[2] / "examples" / "sim"
COUNTS = ("arrived", "started", "finished", "gave_up", "gangs_started", "attempts_refused")


def write_gang_trace(d: Path) -> Path:
    """60 nodes of 8 GPUs (two models) and 1,500 tasks over two days: a fifth are gangs of
    4-32 whole nodes, the rest whole GPUs, GPU shares and CPU-only work, some limited to a
    model; the queue grows past the backfill window, so refused shapes repeat."""
    (d / "nodes.csv").write_text(
        "id,gpus,gpu_model,cpu_milli,memory_mib,count\n"
        "a,8,A100,96000,1048576,40\nh,8,H100,128000,2097152,20\ncpu,0,,64000,262144,4\n"
    )
    r = random.Random(11)
    rows = ["id,submit_s,duration_s,nodes,gpus,gpu_milli,cpu_milli,memory_mib,models,patience_s"]
    for i in range(1500):
        submit = round(r.uniform(0, 2 * 86400), 1)
        dur = round(r.expovariate(1 / 14400) + 60, 1)
        models = r.choice(["", "", "A100", "H100", "A100|H100"])
        patience = r.choice(["", "3600", "43200"])
        kind = r.random()
        if kind < 0.2:
            n, g, milli, cpu, mem = r.choice([4, 8, 16, 32]), 8, 1000, 32000, 262144
        elif kind < 0.6:
            n, g, milli, cpu, mem = 1, r.choice([1, 2, 4, 8]), 1000, 8000, 65536
        elif kind < 0.9:
            n, g, milli, cpu, mem = 1, 1, r.choice([250, 500]), 2000, 8192
        else:
            n, g, milli, cpu, mem, models = 1, 0, 1000, 16000, 16384, ""
        rows.append(f"t{i},{submit},{dur},{n},{g},{milli},{cpu},{mem},{models},{patience}")
    (d / "tasks.csv").write_text("\n".join(rows) + "\n")
    s = d / "gangs.toml"
    s.write_text(
        'name = "gangs"\nkind = "placement"\nsample_minutes = 60\n'
        '[[fleet]]\nname = "lab"\nsource = "nodes"\npath = "nodes.csv"\n'
        '[workload]\nsource = "trace"\npath = "tasks.csv"\npatience_hours = 24\n'
    )
    return s


def replay_digest(scenario: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A digest of every start (task, time, nodes) and of the run's placement counts."""
    starts: list[tuple[str, int, list[int]]] = []

    class Recording(PlacementDriver):
        def _try(self, job: Job, now: int) -> bool:
            ok = super()._try(job, now)
            if ok:
                nodes = [p.node for p in self.running[job.id]]
                starts.append((job.name or str(job.id), now, nodes))
            return ok

    monkeypatch.setattr(engine, "PlacementDriver", Recording)
    result = engine.run(load_scenario(scenario), policy=policy)
    summary: dict[str, Any] = result.summary["placement"]
    blob = json.dumps({"starts": starts, "counts": [summary[k] for k in COUNTS]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Computed with the engine as of commit 37b661f (before the refused-shape memo).
EXPECTED: dict[str, dict[str, str]] = {
    "gangs": {
        "best-fit": "a39ebf3da853e075",
        "carbon-first": "a39ebf3da853e075",
        "cost-first": "a39ebf3da853e075",
        "fgd": "9a91c4d042375c31",
        "spread": "254d87a18fac55da",
    },
    "trace-sample": {
        "best-fit": "7716a4eed38722d3",
        "carbon-first": "c4e03bb340f7e790",
        "cost-first": "c4e03bb340f7e790",
        "fgd": "258b80b3a68d887f",
        "spread": "d539d607df3b8fb7",
    },
    "memory-heavy": {
        "best-fit": "56e30fa7f7a92946",
        "carbon-first": "56e30fa7f7a92946",
        "cost-first": "56e30fa7f7a92946",
        "fgd": "5dd221e2643ab80c",
        "spread": "649c5a88d098b517",
    },
    "memory-heavy-classes": {
        "best-fit": "3249a5ab0287574c",
        "carbon-first": "3249a5ab0287574c",
        "cost-first": "3249a5ab0287574c",
        "fgd": "06d83910d6b4c1d0",
        "spread": "ce0123f115452af7",
    },
    "openb": {
        "best-fit": "b4136b33cda8996a",
        "carbon-first": "451cdceb2b7b4eaf",
        "cost-first": "451cdceb2b7b4eaf",
        "fgd": "1eb9e2cea11c9b4c",
        "spread": "384e3ae3e52b0e1b",
    },
}


def cases() -> list[tuple[str, str]]:
    names = ["gangs", "trace-sample", "memory-heavy", "memory-heavy-classes", "openb"]
    return [(n, p) for n in names for p in sorted(POLICIES)]


@pytest.mark.parametrize(("name", "policy"), cases())
def test_a_replay_starts_the_same_tasks_at_the_same_times(
    name: str, policy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "gangs":
        scenario = write_gang_trace(tmp_path)
    else:
        if name == "openb" and not (OPENB_TRACE / "openb_pod_list_default.csv").exists():
            pytest.skip("the openb trace is not beside the checkout")
        scenario = SIM / f"{name}.toml"
    got = replay_digest(scenario, policy, monkeypatch)
    assert got == EXPECTED[name][policy]


def test_a_refused_gang_is_not_asked_again_until_enough_nodes_were_released() -> None:
    # 20 nodes of 8 GPUs, each filled by one task; 30 gangs of 16 whole nodes wait. Each
    # release frees one node: the gangs cannot fit before the 16th, and the cluster is not
    # asked about them in between (it was: 30 gangs counted the free nodes at every release).
    asked: list[int] = []

    class Counting(Cluster):
        def fits(self, node: int, req: Request) -> tuple[tuple[int, int], ...] | None:
            asked.append(node)
            return super().fits(node, req)

    nodes = [NodeSpec(f"n{i}", 64000, 262144, 8, "H100") for i in range(20)]
    driver = PlacementDriver(Counting.from_nodes(nodes, "best-fit"), Recorder(160.0), EventQueue())
    whole = Request(8000, 65536, 8, FULL)
    singles = [Job(i, "t", 0, 10_000, 10**9, whole) for i in range(20)]
    gangs = [Job(100 + i, "t", 1, 10_000, 10**9, whole, nodes=16) for i in range(30)]
    for job in [*singles, *gangs]:
        driver.arrive(job, job.arrival_ms)
    assert driver.counts["started"] == 20 and driver.queued == 30
    asked.clear()
    for k, job in enumerate(singles[:16], start=1):
        driver.finish(job, 100 + k)
        assert (gangs[0].started_ms is not None) == (k == 16)
    assert gangs[0].started_ms == 116 and driver.queued == 29
    # the 16 free nodes counted once, and the gang's 16 members placed one by one
    assert len(asked) <= 16 + 16 * 16
    assert driver.counts["attempts_refused"] == 30 + 15 * 30 + 29
