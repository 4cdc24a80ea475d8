"""SIGTERM to `crucible run` (a `timeout`, a cancelled CI job, `kill`) ends it like Ctrl-C:
the ephemeral app stops, its queued calls are cancelled, its containers stop, and the
process exits 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import Exchange, wait_for

APP = """
import time

import crucible

app = crucible.App("sleepy")


@app.function(max_containers=1, timeout=600)
def nap(i: int) -> int:
    time.sleep(600)
    return i


@app.local_entrypoint()
def main() -> None:
    print(list(nap.map(range(5))))
"""


def test_sigterm_stops_the_app_and_exits_143(exchange: Exchange, tmp_path: Path) -> None:
    token = exchange.tenant_token("terminated")
    client = exchange.client(token)
    (tmp_path / "sleepy.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(
        CRUCIBLE_HOME=str(tmp_path / "home"),
        CRUCIBLE_SERVER_URL=exchange.url,
        CRUCIBLE_TOKEN=token,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "crucible.cli.main", "run", str(tmp_path / "sleepy.py")],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        calls = wait_for(
            lambda: (
                cs
                if len(cs := client.list_calls()) == 5 and any(c.state == "running" for c in cs)
                else None
            ),
            60,
            "the map's calls, one of them running",
        )
        assert sum(c.state == "queued" for c in calls) == 4
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in err, err
    app = next(a for a in client.list_apps() if a.name == "sleepy")
    assert app.state == "stopped"
    states = [c.state for c in client.list_calls()]
    assert "queued" not in states and len(states) == 5, states
    wait_for(lambda: exchange.host("host-a")["containers"] == 0, 30, "its container to stop")
    client.close()
