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


def test_an_id_of_another_kind_is_named_as_such(exchange: Exchange) -> None:
    """`crucible call ho-...` answered "call ho-... not found" (it read as "your host
    vanished"), though the prefix says what the id is."""
    token = exchange.new_account("kinds")
    client = Client(exchange.url, token)
    try:
        app_id = client.create_app("kinds").id
    finally:
        client.close()
    short_app = f"ap-{app_id[-8:]}"
    host = "ho-01m98xfpnv750rf55t224p"  # a full id: its prefix alone says what it is
    refused(
        cli(exchange, token, "call", host),
        f"{host} is a host id; this command takes a call id (ca-...)",
    )
    refused(
        cli(exchange, token, "call", short_app),
        f"{short_app} is an app id; this command takes a call id (ca-...)",
    )
    refused(
        cli(exchange, token, "token", "revoke", short_app),
        f"{short_app} is an app id; this command takes a token id (tk-...)",
    )
    call = "ca-01m98xwcp156mtna9f1dgx"
    refused(
        cli(exchange, token, "logs", call),
        f"{call} is a call id",
        f"a call's log lines: `crucible logs APP --call {call}`",
    )
    refused(cli(exchange, token, "apps", "stop", call), f"{call} is a call id")
    # A short id that is none of the account's hosts may be a pod's name: not found as one.
    refused(cli(exchange, token, "pod", "show", "ho-abcdefgh"), "ho-abcdefgh")
    out = cli(exchange, token, "pod", "show", "ho-abcdefgh")
    assert "is a host id" not in out.stderr, out.stderr
