"""Deployments end to end with real processes: a deployed app outlives its client, a
redeploy rolls over without failing the call in flight, a broken redeploy leaves the old
version serving, rollback and stop."""

from __future__ import annotations

from pathlib import Path

import pytest

import crucible

import app_deploy_v1
import app_deploy_v2
from harness import Exchange, wait_for


def test_deploy_redeploy_rollback_stop(exchange: Exchange, tmp_path: Path) -> None:
    token = exchange.owner_token("deployer")
    builder = exchange.client(token)
    info = app_deploy_v1.app.deploy(client=builder)
    assert (info.name, info.version) == ("svc", 1)
    version = crucible.Function.from_name("svc", "version", client=builder)
    assert version.remote() == "v1"
    assert version.get_web_url() is None  # not a web endpoint
    slow = crucible.Function.from_name("svc", "slow", client=builder)
    in_flight = slow.spawn(4)
    wait_for(lambda: builder.get_call(in_flight.object_id).state == "running", 30, "running")

    assert app_deploy_v2.app.deploy(client=builder).version == 2
    assert version.remote() == "v2"  # the same handle, forwarded to the current version
    assert in_flight.get(timeout=60) == "v1"  # the old version finished what it had

    # A broken redeploy (it cannot even be imported) changes nothing.
    broken = tmp_path / "broken_svc.py"
    broken.write_text("import crucible\napp = crucible.App('svc')\ndef oops(:\n")
    out = exchange.cli(token, tmp_path / "cli-home", "deploy", str(broken))
    assert out.returncode != 0 and "SyntaxError" in (out.stderr + out.stdout)
    assert version.remote() == "v2"

    rolled = builder.post("/v1/deployments/svc/rollback", {"version": 1})
    assert rolled["version"] == 1
    assert version.remote() == "v1"

    builder.post("/v1/deployments/svc/stop")
    with pytest.raises(crucible.NotFoundError, match="stopped"):
        crucible.Function.from_name("svc", "version", client=builder)
    with pytest.raises(crucible.NotFoundError):
        version.remote()
    builder.close()
