"""What the CLI prints of a thing is what its commands take back: a deployment's id (dp-...)
that `crucible deployments` prints, an app's name that `crucible apps` lists; and an id of
another kind is named as such ("that is a host id") rather than "not found"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.sdk._client import Client

from cli_testlib import cli, refused
from harness import Exchange

APP = """\
import crucible

app = crucible.App("printer")


@app.function()
def f() -> int:
    return 1
"""


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("refs")
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}")
    ex.start_server()  # no agent: deploying and stopping need no host
    try:
        yield ex
    finally:
        ex.close()


def _deploy(ex: Exchange, token: str, tmp_path: Path, name: str) -> dict[str, object]:
    file = tmp_path / "printer.py"
    file.write_text(APP)
    out = cli(ex, token, "deploy", str(file), "--name", name, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    info: dict[str, object] = json.loads(out.stdout)
    return info


def test_a_deployment_is_taken_by_the_id_that_deployments_prints(
    exchange: Exchange, tmp_path: Path
) -> None:
    token = exchange.new_account("dp-ids")
    info = _deploy(exchange, token, tmp_path, "ticker")
    dp_id = str(info["id"])
    assert dp_id.startswith("dp-")
    listed = cli(exchange, token, "deployments")
    assert dp_id in listed.stdout, listed.stdout
    short = f"dp-{dp_id[-8:]}"

    # calls --app and logs take it (the deployment's current app).
    out = cli(exchange, token, "calls", "--app", short, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == []
    out = cli(exchange, token, "deployments", "rollback", dp_id, "1", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["name"] == "ticker"

    # `crucible stop` and `deployments stop` take the full and the short id.
    out = cli(exchange, token, "stop", short, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["state"] == "stopped"
    out = cli(exchange, token, "deployments", "stop", dp_id, "--json")
    assert out.returncode == 0, out.stdout + out.stderr

    refused(cli(exchange, token, "stop", "dp-zzzzzzzz"), "no deployment has the short id")


def test_apps_stop_takes_the_name_that_apps_lists(exchange: Exchange) -> None:
    token = exchange.new_account("app-names")
    client = Client(exchange.url, token)
    try:
        app_id = client.create_app("printer").id  # as `crucible run` makes one
    finally:
        client.close()
    listed = cli(exchange, token, "apps")
    assert "printer" in listed.stdout, listed.stdout
    out = cli(exchange, token, "apps", "stop", "printer")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"printer ({app_id}) is stopped" in out.stdout, out.stdout
    refused(cli(exchange, token, "apps", "stop", "nobody"), "no app or deployment named 'nobody'")
