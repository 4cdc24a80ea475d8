"""The simulator's examples run from a fresh clone alone: the trace samples ship in
examples/sim/traces (generated, reproducibly), and `crucible sim` / `crucible sim compare`
run them in a real subprocess with plots, as a new user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from crucible.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SIM = ROOT / "examples" / "sim"
PNG = b"\x89PNG\r\n\x1a\n"


def crucible(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_HOME"] = str(cwd / "home")
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "sim", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_shipped_samples_are_what_the_generator_writes(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SIM / "make_trace_samples.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    shipped = sorted(p.name for p in (SIM / "traces").iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (SIM / "traces" / name).read_bytes(), name
    tasks = (SIM / "traces" / "mixed-tasks.csv").read_text().splitlines()
    assert 300 <= len(tasks) - 1 <= 500  # a few hundred tasks


def test_no_example_names_a_path_outside_the_repository() -> None:
    for f in SIM.rglob("*"):
        if f.is_file() and f.suffix in (".toml", ".py", ".md"):
            text = f.read_text()
            assert "../" not in text and "/work/" not in text, f
    for f in SIM.glob("*.toml"):
        s = load_scenario(f)
        for p in s.providers:
            if p.source == "nodes":
                assert s.resolve(p.path).resolve().is_relative_to(ROOT), f
        if s.tasks is not None:
            assert s.resolve(s.tasks.path).resolve().is_file(), f


def test_the_trace_sample_runs_from_anywhere_with_plots(tmp_path: Path) -> None:
    out = crucible(str(SIM / "trace-sample.toml"), "--policy", "fgd", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "6 tasks could never run on this fleet" in out.stdout
    rep = tmp_path / "sim-out" / "trace-sample"
    for png in ("utilisation", "allocation", "queueing"):
        assert (rep / f"{png}.png").read_bytes()[:8] == PNG
    data = json.loads((rep / "summary.json").read_text())
    p = data["summary"]["placement"]
    assert p["impossible"]["count"] == 6 and p["gangs_started"] > 0
    assert {x["task"] for x in p["impossible"]["listed"]} == {
        "impossible-h100",
        "impossible-16-gpus",
        "impossible-t4x8",
        "impossible-2tb",
        "impossible-200-cores",
        "impossible-gang-20",
    }
    assert p["started"] + p["gave_up"] + p["impossible"]["count"] + p["still_waiting"] == 400
    # The impossible tasks are a table of their own in report.html, a row each (they were a
    # Python repr in one cell).
    page = (rep / "report.html").read_text()
    assert "<th>task</th><th>reason</th>" in page
    assert "<td>impossible-h100</td><td>unknown_gpu_model</td>" in page
    assert "[{" not in page
    assert max(v for v in data["series"]["fragmented_gpus"] if v is not None) > 0


def test_compare_on_the_memory_heavy_sample_writes_one_report(tmp_path: Path) -> None:
    out = crucible(
        "compare", str(SIM / "memory-heavy.toml"), "--policy", "best-fit", "--policy",
        "spread", "--policy", "fgd", "--seeds", "1", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Ranking on this workload" in out.stdout
    rep = tmp_path / "sim-out" / "memory-heavy-compare"
    for png in ("compare_allocation", "compare_fragmentation", "compare_waits"):
        assert (rep / f"{png}.png").read_bytes()[:8] == PNG
    c = json.loads((rep / "comparison.json").read_text())
    assert c["kind"] == "placement" and list(c["policies"]) == ["best-fit", "spread", "fgd"]
    ranked = c["ranking"]["started_share"]
    assert sorted(p for tier in ranked for p in tier) == ["best-fit", "fgd", "spread"]
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert re.search(r"gave up counts the time from its arrival until it gave up", page)


def test_plots_come_with_the_default_install() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("matplotlib") for d in project["dependencies"])


def test_without_matplotlib_the_run_says_so_and_writes_the_rest(tmp_path: Path) -> None:
    # a matplotlib that cannot be imported, ahead of the real one on the path
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(tmp_path / "fake")
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "sim", str(SIM / "memory-heavy.toml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "plots skipped: matplotlib is not installed" in out.stdout
    rep = tmp_path / "sim-out" / "memory-heavy"
    assert {p.name for p in rep.iterdir()} == {"summary.json", "report.html"}
