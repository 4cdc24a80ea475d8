"""`crucible sim` as a user runs it: a real subprocess on a tiny scenario, and bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crucible.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]

TINY = """
name = "tiny"
kind = "market"
duration_hours = 6
sample_minutes = 30

[[fleet]]
name = "cloud"
gpus = 32
mix = { H100 = 1 }
prices = { H100 = 1.89 }
carbon_g_per_kwh = [100, 200]

[workload]
[[workload.classes]]
name = "train"
load = 0.8
gpus = [4, 8]
models = ["H100"]
duration_hours = 2
"""


def crucible(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_HOME"] = str(cwd / "home")
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "sim", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sim_writes_table_json_plots_and_html(tmp_path: Path) -> None:
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    out = crucible(str(f), "--seed", "3", "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "crucible sim: tiny" in out.stdout and "market.jobs.arrived" in out.stdout
    rep = tmp_path / "rep"
    data = json.loads((rep / "summary.json").read_text())
    assert data["summary"]["seed"] == 3 and data["summary"]["scenario"] == "tiny"
    assert len(data["series"]["t_hours"]) == 12
    for png in ("utilisation.png", "queueing.png", "prices.png"):
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "market.renters" in page
    # --json prints the summary; the default folder is sim-out/<file name>
    out = crucible(str(f), "--json", "--no-plots", "--policy", "carbon-first", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["summary"]["policy"] == "carbon-first"
    assert (tmp_path / "sim-out" / "tiny" / "summary.json").exists()


def test_sim_errors_are_clear(tmp_path: Path) -> None:
    out = crucible("nope.toml", cwd=tmp_path)
    assert out.returncode == 1 and "no such scenario file" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("load = 0.8", "load = 0.8\nbid = [0.1, 0.2]"))
    out = crucible(str(bad), cwd=tmp_path)
    assert out.returncode == 1
    assert "workload.classes[0].bid: a bid is for tier = 'interruptible'" in out.stderr
    out = crucible(str(tmp_path / "bad.toml"), "--policy", "spread", cwd=tmp_path)
    assert out.returncode == 1
    # A report folder that cannot be one is named before the run (it was an OSError's
    # "[Errno 17] File exists" after it).
    good = tmp_path / "tiny.toml"
    good.write_text(TINY)
    (tmp_path / "a-file").write_text("")
    for args in ([str(good)], ["compare", str(good), "--policy", "cost-first", "--seeds", "1"]):
        out = crucible(*args, "--out", str(tmp_path / "a-file"), "--no-plots", cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        assert "is a file; give a folder" in " ".join(out.stderr.split()), out.stderr
        assert "Traceback" not in out.stderr


def test_example_market_scenario_states_its_public_figures() -> None:
    s = load_scenario(ROOT / "examples" / "sim" / "gpu-cloud-market.toml")
    by = {p.name: p for p in s.providers}
    assert by["hyperscale"].gpus == 250_000 and by["hyperscale"].sites == 32
    assert by["hyperscale"].prices["H100"] == 1.89
    assert min(by["serverless"].prices.values()) == 0.17
    assert max(by["serverless"].prices.values()) == 3.99
    assert by["p2p"].gpus == 10_000 and by["p2p"].gpus // by["p2p"].gpus_per_host == 1_000
    assert by["flared-gas"].sites == 86
    assert {c.tier for c in s.classes} == {"on_demand", "interruptible"}


def test_a_name_with_dollar_signs_is_plain_text_in_the_plots(tmp_path: Path) -> None:
    """A pricing study's name ("A100 at $2/h vs $3/h") or an unbalanced "$\\foo{" stopped the
    run in matplotlib's TeX parser, leaving no plots and no report.html."""
    f = tmp_path / "dollars.toml"
    f.write_text(TINY.replace('name = "tiny"', 'name = "A100 at $2/h \\\\foo{ vs $3/h"', 1))
    out = crucible(str(f), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
