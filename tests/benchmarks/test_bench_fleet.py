"""The fleet emulator's quick size runs end to end: a real server, emulated hosts speaking
the agent protocol over HTTP, pods submitted through the API and assigned to the hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_fleet_places_every_pod(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_fleet.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["fleet"]["hosts"] == 50
    assert result["fleet"]["gpus"] == 400
    assert result["submitted"] == result["workload"]["pods"] > 0
    # Every submitted pod reached a host through the real sync protocol.
    assert result["assigned"] == result["submitted"]
    assert result["placements_per_s"] > 0
    assert result["submit_to_assignment"]["n"] == result["assigned"]
    assert result["db_bytes_end"] >= result["db_bytes_start"] > 0
    assert result["errors"] == []
    assert "Fleet emulator" in proc.stdout


def test_bad_size_is_refused_with_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_fleet.py"), "--rate", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--rate must be positive" in proc.stderr
