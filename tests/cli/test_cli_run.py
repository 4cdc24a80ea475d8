"""The README's main job: `crucible run examples/hello.py` on a fresh home, then the bill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crucible.protocol.hosts import IsolationReport

from harness import free_port

ROOT = Path(__file__).resolve().parents[2]


def _completed(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _crucible(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    out = _completed(args, env, timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_run_hello_starts_an_embedded_exchange_and_bills(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(CRUCIBLE_HOME=str(tmp_path / "home"), CRUCIBLE_PORT=str(free_port()))
    try:
        out = _crucible(["run", "examples/hello.py"], env)
        assert out.split() == ["49", str(sum(x * x for x in range(10_000))), "144"]
        # `crucible run` returned once the app's containers had stopped (and been billed).
        apps = json.loads(_crucible(["apps", "--json"], env))
        assert apps[0]["name"] == "hello" and apps[0]["containers"] == 0
        bill = json.loads(_crucible(["bill", "--json"], env))
        line = bill["lines"][0]
        assert line["app_name"] == "hello" and line["function_name"] == "square"
        assert line["calls"] == 10_002 and line["containers"] >= 1
        assert line["container_ms"] > 0 and bill["total_micros"] == line["cost_micros"]
        # The agent measured (or, without RAPL, estimated and said so) the energy it drew.
        assert line["energy_mwh"] > 0 and bill["total_energy_mwh"] == line["energy_mwh"]
        ranked = json.loads(_crucible(["bill", "--by", "carbon", "--json"], env))
        assert [a["app_name"] for a in ranked] == ["hello"]
        assert ranked[0]["energy_mwh"] == line["energy_mwh"]
        assert "kWh" in _crucible(["bill"], env)
        # Over a period: the last hour holds it all; before 2000, nothing.
        hour = json.loads(_crucible(["bill", "--since", "1h", "--json"], env))
        assert hour["lines"] == bill["lines"] and hour["since_ms"] is not None
        past = _crucible(["bill", "--until", "2000-01-01"], env)
        assert "Total: $0.000000" in past and "Period: the start to 2000-01-01 00:00:00" in past
        hosts = json.loads(_crucible(["hosts", "--json"], env))
        assert hosts[0]["state"] == "ready"
        calls = json.loads(_crucible(["calls", "--json", "--limit", "3"], env))
        assert [c["state"] for c in calls] == ["succeeded"] * 3
        apps = json.loads(_crucible(["apps", "--json"], env))
        assert apps[0]["name"] == "hello" and apps[0]["state"] == "stopped"
        made = json.loads(_crucible(["token", "create", "--scope", "host", "--json"], env))
        assert made["scope"] == "host" and made["token"].startswith("cru_")
        listed = json.loads(_crucible(["token", "list", "--json"], env))
        assert made["id"] in {t["id"] for t in listed}
        _crucible(["token", "revoke", made["id"]], env)
        listed = json.loads(_crucible(["token", "list", "--json"], env))
        assert next(t for t in listed if t["id"] == made["id"])["revoked"] is True

        # The market: this machine's host, its CPU prices, earnings, statement, quotes.
        host_id = hosts[0]["id"]
        priced = json.loads(
            _crucible(
                [
                    "host",
                    "price",
                    host_id,
                    "cpu",
                    "--on-demand",
                    "0.05",
                    "--interruptible-min",
                    "0.02",
                    "--reserved",
                    "0.04",
                    "--memory",
                    "0.01",
                    "--json",
                ],
                env,
            )
        )
        assert priced["offers"][-1] == {
            "device_type": "cpu",
            "on_demand_micros": 50_000,
            "interruptible_min_micros": 20_000,
            "reserved_micros": 40_000,
            "memory_on_demand_micros": 10_000,
            "memory_interruptible_micros": 10_000,
            "memory_reserved_micros": 10_000,
            "priced": True,
        }
        # One price changed: the others stay as they were (all three were required).
        again = ["host", "price", host_id, "cpu", "--on-demand", "0.06", "--json"]
        repriced = json.loads(_crucible(again, env))["offers"][-1]
        assert repriced == {**priced["offers"][-1], "on_demand_micros": 60_000}
        earned = json.loads(_crucible(["host", "earnings", "--json"], env))
        assert earned["charged_micros"] == bill["total_micros"] > 0
        assert earned["charged_micros"] == earned["fee_micros"] + earned["earned_micros"]
        csv_lines = _crucible(["statement", "--kind", "apps", "--csv"], env).splitlines()
        assert csv_lines[0] == "app_id,app_name,intervals,ms,cost_micros,energy_mwh,carbon_mg"
        assert csv_lines[1].split(",")[1] == "hello"
        quote = json.loads(_crucible(["market", "quote", "2xH100", "--json"], env))
        assert not quote["available"] and quote["refusal"] == "no_offer"
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "crucible.cli.main",
                "market",
                "quote",
                "H100",
                "--tier",
                "spot",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "on-demand, interruptible or reserved" in bad.stderr

        # Tenancy and the audit log: the local host's isolation is shown; the token made and
        # revoked above and the price set are audited, for the admin token `up` made.
        [local] = json.loads(_crucible(["hosts", "--json"], env))
        # `crucible up` sandboxes wherever the machine can: the agent's measured report says
        # whether strangers' code may run here, and the flag follows it.
        assert local["isolation"]["runtime"] in ("bwrap", "process")
        assert local["isolated"] is IsolationReport.model_validate(local["isolation"]).full()
        # The agent's self-test ran at registration and the server judged it (a verdict
        # either way: a busy machine may not show all its cores in parallel).
        assert [r["kind"] for r in local["verification"]["results"]] == ["cpu"]
        assert local["verification"]["reason"]
        assert "isolation:" in _crucible(["market", "hosts"], env)
        audit = json.loads(_crucible(["audit", "--json"], env))
        actions = [e["action"] for e in audit["entries"]]
        assert actions[:4] == ["host.offer", "host.offer", "token.revoke", "token.create"]
        assert audit["entries"][2]["target"] == made["id"]
        wide = {**env, "COLUMNS": "200"}
        assert "host.offer" in _crucible(["audit", "--action", "host.offer"], wide)
        # A function by name, as `modal run FILE::FUNCTION` does: its parameters as flags.
        fns = tmp_path / "fns.py"
        fns.write_text(
            "import crucible\napp = crucible.App('fns')\n"
            "@app.function()\ndef double(x: int, tag: str = 'a'):\n    return [x * 2, tag]\n"
            "@app.function()\ndef count(n: int):\n    yield from range(n)\n"
            "@app.function()\ndef chatty():\n    print('from the container')\n    return 1\n"
            "@app.function()\ndef boom():\n    raise ValueError('kaboom')\n"
        )
        assert _crucible(["run", f"{fns}::double", "--x", "21"], env).split() == ["[42,", "'a']"]
        # What the container prints is streamed to the terminal (stderr; the result on
        # stdout), as `modal run` does; a remote error shows the error, not the CLI's frames.
        out = _completed(["run", f"{fns}::chatty"], env)
        assert (out.returncode, out.stdout.strip()) == (0, "1"), out.stderr
        assert "from the container" in out.stderr, out.stderr
        out = _completed(["run", f"{fns}::boom"], env)
        assert out.returncode == 1 and "ValueError: kaboom" in out.stderr, out.stderr
        assert "cli/run.py" not in out.stderr, out.stderr
        assert _crucible(["run", f"{fns}::count", "--n", "3"], env).strip() == "[0, 1, 2]"
    finally:
        subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", "down"], env=env, timeout=60, check=False
        )


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(CRUCIBLE_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "run", "does/not/exist.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "does not exist" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "agent", "--server", "http://127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "host token" in out.stderr
    # A function run by name without a parameter it needs: said before anything starts (it
    # was a container's TypeError under a traceback of Crucible's own frames).
    app = tmp_path / "app.py"
    app.write_text(
        "import crucible\napp = crucible.App('needs')\n\n"
        "@app.function()\ndef square(x: int, *, power: int = 2) -> int:\n    return x**power\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "run", f"{app}::square", "--power", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "square() needs --x VALUE" in out.stderr and "Traceback" not in out.stderr
    # FILE --help lists the target's own options (it printed `crucible run`'s help).
    out = _completed(["run", f"{app}::square", "--help"], env, 60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--x INT  (required)" in out.stdout and "--power INT  (default: 2)" in out.stdout
    multi = tmp_path / "multi.py"
    multi.write_text(
        "import crucible\napp = crucible.App('multi')\n\n"
        "@app.local_entrypoint()\ndef a(): ...\n\n@app.local_entrypoint()\ndef b(): ...\n"
    )
    out = _completed(["run", str(multi), "--help"], env, 60)  # which targets there are
    assert out.returncode == 0 and "several entrypoints (a, b)" in out.stdout, out.stderr
    out = _completed(["run", "--help"], env, 60)
    assert out.returncode == 0 and "FILE.py::NAME" in out.stdout, out.stdout + out.stderr
    out = _completed(["run"], env, 60)
    assert out.returncode == 2 and "Usage:" in out.stdout, out.stdout + out.stderr
    assert not (tmp_path / "home" / "up.lock").exists()  # no exchange was started for it


def test_the_agent_refuses_a_list_of_servers_with_the_way_out(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_HOME"] = str(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "agent",
            "--server",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--token",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    said = " ".join(out.stderr.split())  # the terminal wraps long lines
    assert "takes one server URL" in said and "load balancer" in said
