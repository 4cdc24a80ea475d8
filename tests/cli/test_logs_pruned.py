"""`crucible logs` of an app older than the log window says its lines were pruned (after
retention it said the functions "printed nothing": ops2 probe)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from crucible.protocol.transport import Transport

from harness import Exchange

WINDOW_DAYS = 0.00002  # 1.7 s


def test_logs_of_an_app_older_than_the_log_window(tmp_path: Path) -> None:
    ex = Exchange(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        CRUCIBLE_RETENTION_LOGS_DAYS=str(WINDOW_DAYS),
    )
    ex.start_server()
    try:
        token = ex.owner_token()
        t = Transport(ex.url, token, retry_for_s=0)
        try:
            app_id = t.post("/v1/apps", {"name": "old"})["id"]
        finally:
            t.close()
        time.sleep(WINDOW_DAYS * 86_400 + 0.5)  # the app is older than the window now
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        env.update(
            CRUCIBLE_HOME=str(tmp_path / "cli-home"),
            CRUCIBLE_SERVER_URL=ex.url,
            CRUCIBLE_TOKEN=token,
        )
        out = subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", "logs", app_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        ex.close()
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    assert f"no log lines kept from app {app_id}: log lines older than" in out.stderr
    assert "CRUCIBLE_RETENTION_LOGS_DAYS" in out.stderr and "printed nothing" not in out.stderr
