"""Scenario files: what parses, and the errors bad files get (they name the key and the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.errors import InvalidRequestError
from crucible.sim.engine import run
from crucible.sim.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]

MARKET = """
name = "m"
kind = "market"
duration_hours = 2

[[fleet]]
name = "cloud"
gpus = 16
mix = { H100 = 1 }
prices = { H100 = 1.89 }

[workload]
[[workload.classes]]
name = "train"
load = 0.5
gpus = [8]
models = ["H100"]
"""


def test_examples_parse() -> None:
    files = sorted((ROOT / "examples" / "sim").glob("*.toml"))
    assert {f.stem for f in files} >= {"openb", "openb-100k", "openb-250k", "gpu-cloud-market"}
    for f in files:
        s = load_scenario(f)
        assert s.name and s.providers
    market = load_scenario(ROOT / "examples" / "sim" / "gpu-cloud-market.toml")
    assert market.kind == "market" and market.duration_hours == 168
    assert {p.name: p.sites for p in market.providers}["hyperscale"] == 32
    assert {p.name: p.sites for p in market.providers}["flared-gas"] == 86


def test_a_valid_market_scenario() -> None:
    s = parse_scenario(MARKET, "m.toml")
    assert s.kind == "market" and s.policy == "cost-first"
    assert s.classes[0].gpus == (8,) and s.classes[0].tier == "on_demand"
    assert s.providers[0].prices == {"H100": 1.89}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "\n[[[", "not valid TOML"),
        (lambda t: t.replace('kind = "market"', 'kind = "auction"'), "kind: must be one of"),
        (lambda t: t.replace('kind = "market"\n', ""), "kind: is required"),
        (lambda t: t.replace("duration_hours = 2", "duration_hours = 0"), "needs a duration"),
        (lambda t: t.replace("duration_hours = 2", 'duration_hours = "2"'), "must be a number"),
        (
            lambda t: t.replace("duration_hours = 2", "duration_hours = 1e12"),
            "duration_hours: must be within 0.0..87600.0",
        ),
        (
            lambda t: t.replace("gpus = 16", "gpus = 1000000000000"),
            "fleet[0].gpus: must be within 0..2,000,000",
        ),
        (lambda t: t.replace("load = 0.5", "lod = 0.5"), "classes[0].lod: is not a known key"),
        (lambda t: t.replace("load = 0.5", "load = -1"), "load: must be within"),
        (lambda t: t.replace("prices = { H100 = 1.89 }", "prices = {}"), "no price for ['H100']"),
        (lambda t: t.replace("gpus = 16", "gpus = 0"), "needs gpus >= 1"),
        (lambda t: t.replace('models = ["H100"]', "models = []"), "names the GPU models"),
        (lambda t: t.replace("gpus = [8]", "gpus = [0]"), "whole numbers >= 1"),
        (lambda t: t.replace('name = "train"', 'name = "train"\nbid = [0.3, 0.5]'), "is for tier"),
        (
            lambda t: t.replace('name = "train"', 'name = "train"\ngpu_milli = 300'),
            "needs gpus = [1]",
        ),
        (lambda t: t.replace('kind = "market"', 'kind = "market"\npolicy = "fgd"'), "cost-first"),
        (
            lambda t: t.replace("[workload]", '[workload]\nsource = "openb"'),
            "placement kind only",
        ),
    ],
)
def test_bad_scenarios_name_the_problem(edit: object, message: str) -> None:
    assert callable(edit)
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(edit(MARKET), "bad.toml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("bad.toml: ")
    assert isinstance(exc.value, InvalidRequestError)  # under the one error root


def test_missing_and_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(ScenarioError, match="a directory, not a scenario file"):
        load_scenario(tmp_path / "d.toml")
    other = tmp_path / "s.yaml"
    other.write_text(MARKET)
    with pytest.raises(ScenarioError, match=r"is a \.toml file"):
        load_scenario(other)
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfename = 'x'\n")
    with pytest.raises(ScenarioError, match=r"b.toml: not a UTF-8 text file"):
        load_scenario(binary)


@pytest.mark.parametrize("where", ["/dev/zero", "."])
def test_a_trace_path_that_is_not_a_file_is_refused(tmp_path: Path, where: str) -> None:
    # Reading /dev/zero as a node file never ended (and grew without bound).
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "x"\nkind = "placement"\n[[fleet]]\nname = "a"\nsource = "nodes"\n'
        f'path = "{where}"\n[workload]\nsource = "trace"\npath = "tasks.csv"\n'
    )
    with pytest.raises(ScenarioError, match=r"not a file \(a trace is a CSV or Parquet file\)"):
        run(load_scenario(path))
