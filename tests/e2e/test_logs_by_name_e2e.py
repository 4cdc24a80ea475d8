"""`crucible logs APP` takes an app id, an app's name (its most recent app, ephemeral or
deployed) or a deployment's name; an unknown name says how to find apps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import app_basic
from harness import Exchange, wait_for


def _logs(
    exchange: Exchange, token: str, home: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **exchange.process_env(home),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
    }
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "logs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_logs_by_app_name(exchange: Exchange, tmp_path: Path) -> None:
    token = exchange.tenant_token("logger")
    builder = exchange.client(token)
    with app_basic.app.run(client=builder):
        assert app_basic.chatty.remote(2) == 2
        app_id = app_basic.app.app_id
        assert app_id is not None

        def stored() -> int:
            return len(builder.get(f"/v1/apps/{app_id}/logs")["lines"])

        wait_for(lambda: stored() == 3, 30, "the call's lines")
    # A second run of the same app: its name now means this one (the most recent).
    with app_basic.app.run(client=builder):
        assert app_basic.chatty.remote(3) == 3
        newest = app_basic.app.app_id
        wait_for(lambda: len(builder.get(f"/v1/apps/{newest}/logs")["lines"]) == 4, 30, "lines")

    by_id = _logs(exchange, token, tmp_path / "h1", app_id)
    assert by_id.returncode == 0, by_id.stderr
    assert "line 1 of 2" in by_id.stdout
    # One call's lines, by its short id (as every command takes ids).
    call_id = builder.get(f"/v1/apps/{app_id}/logs")["lines"][0]["call_id"]
    short = f"ca-{call_id[-8:]}"
    one_call = _logs(exchange, token, tmp_path / "h1c", app_id, "--call", short)
    assert one_call.returncode == 0 and "line 1 of 2" in one_call.stdout, one_call.stderr
    # Following an app that has stopped prints its lines and ends (it waited forever).
    followed = _logs(exchange, token, tmp_path / "h1f", app_id, "-f")
    assert followed.returncode == 0 and "line 1 of 2" in followed.stdout, followed.stderr

    by_name = _logs(exchange, token, tmp_path / "h2", "basic", "--json")
    assert by_name.returncode == 0, by_name.stderr
    assert "line 1 of 2" not in by_name.stdout  # the newest "basic" printed nothing
    assert builder.get("/v1/apps?name=basic")[0]["id"] == newest

    unknown = _logs(exchange, token, tmp_path / "h3", "no-such-app")
    assert unknown.returncode != 0
    text = unknown.stdout + unknown.stderr
    assert "no app or deployment named 'no-such-app'" in text and "crucible apps" in text
    assert "Traceback" not in text

    # Another account's app of that name is not found (never told apart from "no such app").
    other = exchange.new_account("someone-else")
    theirs = _logs(exchange, other, tmp_path / "h4", "basic")
    assert theirs.returncode != 0 and "no app or deployment named 'basic'" in (
        theirs.stdout + theirs.stderr
    )
    builder.close()


def test_logs_by_deployment_name(exchange: Exchange, tmp_path: Path) -> None:
    import app_deploy_v1

    token = exchange.tenant_token("deployer")
    builder = exchange.client(token)
    app_deploy_v1.app.deploy(client=builder)
    current = builder.get("/v1/deployments/svc")["app_id"]
    out = _logs(exchange, token, tmp_path / "h", "svc")
    assert out.returncode == 0, out.stderr
    assert builder.get("/v1/apps?name=svc")[0]["id"] == current
    builder.close()
