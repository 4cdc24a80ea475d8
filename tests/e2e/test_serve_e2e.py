"""`crucible serve`: deploys, redeploys when the code changes (a broken change leaves the
previous version serving), and stops the deployment when it ends."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import crucible

from harness import Exchange, wait_for

APP = """
import crucible

app = crucible.App("live")


@app.function()
def version() -> str:
    return "{version}"
"""


def test_serve_redeploys_on_change_and_stops_at_the_end(exchange: Exchange, tmp_path: Path) -> None:
    token = exchange.owner_token("dev")
    client = exchange.client(token)
    src = tmp_path / "proj"
    src.mkdir()
    app_file = src / "live_app.py"
    app_file.write_text(APP.format(version="one"))
    env = {
        **exchange.process_env(tmp_path / "cli-home"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
    }
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crucible.cli.main", "serve", str(app_file)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def current() -> str | None:
            try:
                return crucible.Function.from_name("live-dev", "version", client=client).remote()
            except crucible.NotFoundError:
                return None

        assert wait_for(lambda: current() == "one", 60, "first version")
        app_file.write_text(APP.format(version="two"))
        wait_for(lambda: current() == "two", 60, "redeployed")
        app_file.write_text("def broken(:\n")  # a change that does not load
        wait_for(lambda: "deploy failed" in log.read_text(), 60, "the failed redeploy")
        assert current() == "two"
        assert client.get("/v1/deployments/live-dev")["version"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert "the previous version keeps serving" in log.read_text()
    assert client.get("/v1/deployments/live-dev")["state"] == "stopped"
    client.close()
