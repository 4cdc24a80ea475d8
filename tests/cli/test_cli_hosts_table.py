"""`crucible hosts` (the README quickstart's) in 80 columns: numbers are never folded
mid-digit ("0/2410" above "5") and the GPUs read `2xH100 (fake)`, not five lines of
`0:H100 (fake), 1:H100 (fake)`."""

from __future__ import annotations

import json
from pathlib import Path

from cli_testlib import crucible, one_host


def test_hosts_fit_80_columns_without_splitting_numbers(tmp_path: Path) -> None:
    with one_host(tmp_path, fake_gpus="2xH100") as (ex, token):
        env = {
            "CRUCIBLE_HOME": str(tmp_path / "cli-home"),
            "CRUCIBLE_SERVER_URL": ex.url,
            "CRUCIBLE_TOKEN": token,
            "COLUMNS": "80",
        }
        out = crucible("hosts", "--json", env=env)
        assert out.returncode == 0, out.stderr
        host = json.loads(out.stdout)[0]
        out = crucible("hosts", env=env)
        assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), out.stdout
    row = next(line for line in lines if line.startswith("ho-"))
    memory = f"{host['allocated_memory_mib']}/{host['inventory']['memory_mib']}"
    cpu = f"{host['allocated_cpu']:g}/{host['inventory']['cpu_cores']:g}"
    assert f" {memory} " in row and f" {cpu} " in row, out.stdout
    assert "containers" in out.stdout, out.stdout
    assert "gCO2/kWh undeclared" in " ".join(out.stdout.split()), out.stdout
    assert "2xH100" in row and "(fake)" in out.stdout and "1:H100" not in out.stdout, out.stdout
