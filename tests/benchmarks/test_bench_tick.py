"""The tick benchmark's small size runs end to end: hosts registered, pods placed and started
through the real API and syncs, then ticks measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_small_tick_bench_starts_every_pod(tmp_path: Path) -> None:
    out = tmp_path / "tick.json"
    argv = ["--hosts", "4", "--gpus-per-host", "4", "--pods", "12", "--new-pods", "2"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_tick.py"), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["gpus"], result["pods_started"]) == (16, 12)
    assert result["quiet_tick_cpu_ms"] > 0 and result["tick_placing_new_pods_cpu_ms"] > 0
