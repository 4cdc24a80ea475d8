"""`crucible sim compare`: several market policies over several seeds, one side-by-side
report; the figures it folds, and the command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crucible.sim.compare import compare
from crucible.sim.compare_report import write_compare_report
from crucible.sim.engine import list_prices, run
from crucible.sim.fleet import build_fleet
from crucible.sim.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]

# Two providers: a dear grid cloud and a cheap, green one; on-demand and interruptible work.
MARKET = """
name = "two clouds <b>"
kind = "market"
duration_hours = 12
sample_minutes = 60
default_carbon_g_per_kwh = 400

[power_watts]
H100 = 700

[[fleet]]
name = "grid"
gpus = 32
mix = { H100 = 1 }
prices = { H100 = 1.89 }
interruptible_min = 0.5
carbon_g_per_kwh = [500, 600]

[[fleet]]
name = "hydro"
gpus = 16
mix = { H100 = 1 }
prices = { H100 = 0.95 }
interruptible_min = 0.5
carbon_g_per_kwh = [10, 20]

[workload]
[[workload.classes]]
name = "train"
load = 0.5
gpus = [4, 8]
models = ["H100"]
duration_hours = 2
patience_hours = 2

[[workload.classes]]
name = "batch"
tier = "interruptible"
load = 0.4
gpus = [1, 2]
models = ["H100"]
duration_hours = 1
patience_hours = 4
bid = [0.3, 0.9]
"""


def test_list_prices_are_the_catalogs_reference_else_the_highest_ask() -> None:
    s = parse_scenario(
        MARKET.replace(
            "mix = { H100 = 1 }\nprices = { H100 = 0.95 }",
            "mix = { A40 = 1 }\nprices = { A40 = 0.40 }",
        ),
    )
    hosts, _ = build_fleet(s, 1, lambda d: [])
    assert list_prices(hosts) == {"H100": 1_890_000, "A40": 400_000}


def test_a_run_reports_per_tier_market_figures() -> None:
    m = run(parse_scenario(MARKET), seed=2).summary["market"]
    tiers = m["tiers"]
    assert set(tiers) == {"on_demand", "interruptible"}
    od, it = tiers["on_demand"], tiers["interruptible"]
    # renters pay at most the list price on demand (asks are at or below it here), and their
    # bids (30-90% of the mean ask) when interruptible
    assert 0 < od["paid_vs_list"]["mean"] <= 1.0
    assert 0 < it["paid_vs_list"]["p10"] <= it["paid_vs_list"]["p90"] <= 1.0
    # hosts keep 90% (the default fee is 10%) of what renters paid
    assert od["host_income_usd_per_gpu_hour"] == pytest.approx(
        od["usd_per_gpu_hour"] * 0.9, rel=1e-3
    )
    assert od["kwh_per_gpu_hour"] == pytest.approx(0.7)
    assert it["jobs"]["arrived"] >= it["jobs"]["finished"] + it["jobs"]["gave_up"] - 1
    assert sum(m["gave_up_by_reason"].values()) == m["jobs"]["gave_up"]
    assert all(k.split(":")[0] in ("on_demand", "interruptible") for k in m["gave_up_by_reason"])


def test_compare_folds_seeds_and_measures_policies_against_the_baseline(tmp_path: Path) -> None:
    s = parse_scenario(MARKET)
    c = compare(s, ["cost-first", "carbon-first", "green-capped-interruptible"], [1, 2])
    assert c["baseline"] == "cost-first" and c["seeds"] == [1, 2]
    assert set(c["policies"]) == {"cost-first", "carbon-first", "green-capped-interruptible"}
    assert len(c["runs"]["carbon-first"]) == 2
    cost, green = c["policies"]["cost-first"], c["policies"]["carbon-first"]
    # the mean over seeds lies between the seeds
    for key in ("utilisation", "utilisation_second_half"):
        u = cost[key]
        assert u["min"] <= u["mean"] <= u["max"]
    # here the greenest hosts are also the cheapest: carbon-first cuts emissions and costs
    # no more than cost-first
    v = c["versus_baseline"]["carbon-first"]
    assert v["carbon_change"] is not None and v["carbon_change"] <= 0
    assert green["carbon_g_per_gpu_hour"]["mean"] <= cost["carbon_g_per_gpu_hour"]["mean"]
    assert set(c["goals"]["carbon"]["by_policy"]) == {"carbon-first", "green-capped-interruptible"}
    for p, d in c["goals"]["discount"]["by_policy"].items():
        paid = c["policies"][p]["paid_vs_list"]["mean"]
        assert d["below_list"] == pytest.approx(1 - paid, abs=1e-4)
        steady = c["policies"][p]["utilisation_second_half"]["mean"]
        assert d["utilisation"] == steady
        assert d["met"] == (paid <= 0.4 and steady >= 0.9)
    # interruptible work under a 300 g/kWh cap runs only on the hydro hosts
    capped = c["policies"]["green-capped-interruptible"]["tiers"]["interruptible"]
    assert capped["carbon_g_per_gpu_hour"] <= 0.7 * 20

    written = write_compare_report(c, {"wall_s": 1.0}, tmp_path / "rep")
    for png in ("compare_utilisation", "compare_prices", "compare_carbon", "compare_income"):
        assert written[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = written["html"].read_text()
    assert "two clouds &lt;b&gt;" in page and "two clouds <b>" not in page
    assert page.count("data:image/png;base64,") == 4
    assert json.loads(written["json"].read_text())["baseline"] == "cost-first"


def test_compare_refuses_what_it_cannot_compare() -> None:
    s = parse_scenario(MARKET)
    with pytest.raises(ScenarioError, match="each --policy once"):
        compare(s, ["cost-first", "cost-first"], [1])
    with pytest.raises(ScenarioError, match="cannot drive a market scenario"):
        compare(s, ["cost-first", "spread"], [1])
    with pytest.raises(ScenarioError, match="at least one --policy"):
        compare(s, [], [1])
    for gpus in (0, 10**12):  # 10**12 built hosts without end
        with pytest.raises(ScenarioError, match=r"--gpus must be within 1\.\.2,000,000"):
            compare(s, ["cost-first"], [1], gpus=gpus)


def _crucible(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
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


def test_the_compare_command_writes_one_report(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text(MARKET)
    out = _crucible(
        "compare", str(f), "--policy", "cost-first", "--policy", "carbon-first",
        "--seeds", "2", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Against cost-first" in out.stdout and "Goal: renters pay" in out.stdout
    rep = tmp_path / "sim-out" / "m-compare"
    assert {p.name for p in rep.iterdir()} >= {"comparison.json", "report.html"}
    data = json.loads((rep / "comparison.json").read_text())
    assert data["seeds"] == [1, 2] and data["timing"]["runs"] == 4
    # one scenario still runs with the plain command
    out = _crucible(str(f), "--no-plots", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tiers" in json.loads(out.stdout)["summary"]["market"]
    # an openb scenario without the trace: a clear error, no traceback
    placement = ROOT / "examples" / "sim" / "openb.toml"
    out = _crucible("compare", str(placement), "--policy", "best-fit", cwd=tmp_path)
    assert out.returncode == 1 and "CRUCIBLE_OPENB_TRACE_DIR" in out.stderr
    assert "Traceback" not in out.stderr


PLACEMENT = """
name = "two <i>racks</i>"
kind = "placement"
duration_hours = 12
sample_minutes = 30

[[fleet]]
name = "dc"
gpus = 64
memory_gib_per_host = 512
mix = { A100 = 1 }
prices = { A100 = 1.29 }

[workload]
[[workload.classes]]
name = "mem"
load = 1.2
gpus = [1, 2, 4]
memory_gib = 200
models = ["A100"]
duration_hours = 2
patience_hours = 2

[[workload.classes]]
name = "h100"
load = 0.05
gpus = [1]
models = ["H100", "A100"]
"""


def test_compare_placement_policies_side_by_side(tmp_path: Path) -> None:
    s = parse_scenario(PLACEMENT)
    c = compare(s, ["best-fit", "spread", "fgd"], [1, 2])
    assert c["kind"] == "placement" and c["baseline"] == "best-fit"
    f = c["policies"]["spread"]
    for key in ("gpu_allocation_mean", "started_share", "wait_all_mean_s"):
        assert f[key]["min"] <= f[key]["mean"] <= f[key]["max"]
    # waits of every task (gave-up ones censored) are at least those of the started ones
    assert f["wait_all_mean_s"]["mean"] >= f["wait_started_mean_s"]["mean"]
    assert f["gave_up_share"]["mean"] > 0
    # the same horizon for every policy: allocation = GPU-hours / (horizon x GPUs)
    assert f["gpu_allocation_mean"]["mean"] == pytest.approx(
        f["gpu_hours_allocated"]["mean"] / (c["simulated_hours"] * c["gpus"]), abs=1e-3
    )
    assert c["versus_baseline"]["spread"]["started_share"] == pytest.approx(
        f["started_share"]["mean"] - c["policies"]["best-fit"]["started_share"]["mean"],
        abs=1e-4,
    )
    # each figure ranks every policy once; a tier holds equal figures
    for key, tiers in c["ranking"].items():
        assert sorted(p for t in tiers for p in t) == ["best-fit", "fgd", "spread"], key
        means = [c["policies"][t[0]][key]["mean"] for t in tiers]
        assert len(set(means)) == len(means)
    assert len(f["series"]["gpu_allocation"]) == len(f["series"]["t_hours"]) == 24
    written = write_compare_report(c, {"wall_s": 1.0}, tmp_path / "rep")
    page = written["html"].read_text()
    assert "two &lt;i&gt;racks&lt;/i&gt;" in page and "<i>racks" not in page
    assert page.count("data:image/png;base64,") == 3


def test_compare_placement_refuses_gpus_without_generated_providers(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("id,gpus,gpu_model,cpu_milli,memory_mib\nn,8,A100,1,1\n")
    (tmp_path / "t.csv").write_text("id,submit_s,duration_s,gpus\nt,0,60,1\n")
    (tmp_path / "s.toml").write_text(
        'name = "n"\nkind = "placement"\n[[fleet]]\nname = "n"\nsource = "nodes"\n'
        'path = "n.csv"\n[workload]\nsource = "trace"\npath = "t.csv"\n'
    )
    s = load_scenario(tmp_path / "s.toml")
    with pytest.raises(ScenarioError, match="--gpus rescales generated providers"):
        compare(s, ["best-fit"], [1], gpus=100)
