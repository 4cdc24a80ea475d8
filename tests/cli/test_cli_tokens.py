"""`crucible token`: revoking the token in use, or the exchange's last admin token, locks
someone out, so it wants --force; a revoked `crucible up` token is answered with the restart
that writes a new one; `token list` says yes/no, `token create` that the secret is shown once.
Through the real CLI against a real server (and a real `crucible up`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_testlib import cli, refused
from cli_testlib import crucible as run_crucible
from harness import Exchange, free_port


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        yield ex
    finally:
        ex.close()


def test_revoking_the_token_in_use_or_the_last_admin_one_wants_force(exchange: Exchange) -> None:
    me = exchange.owner_token("me")  # a user token of the operator's account
    made = cli(exchange, me, "token", "create", "--name", "a2")
    assert made.returncode == 0 and "tk-" in made.stdout, made.stderr
    assert "shown only once" in " ".join(made.stderr.split()), made.stderr
    listed = cli(exchange, me, "token", "list")
    assert listed.returncode == 0 and " no " in listed.stdout, listed.stdout
    assert "False" not in listed.stdout and "True" not in listed.stdout, listed.stdout

    refused(
        cli(exchange, me, "token", "revoke", "me"),
        "is the one this request was made with",
        "crucible token create",
        "--force",
    )
    assert cli(exchange, me, "token", "list").returncode == 0  # still works
    out = cli(exchange, me, "token", "revoke", "a2")  # by its name, as the list shows it
    assert out.returncode == 0 and "revoked tk-" in out.stdout, out.stderr
    assert " yes " in cli(exchange, me, "token", "list").stdout
    tokens = json.loads(cli(exchange, me, "token", "list", "--json").stdout)
    admin = next(t["id"] for t in tokens if t["scope"] == "admin")
    refused(
        cli(exchange, me, "token", "revoke", admin),
        "the exchange's last admin token",
        "crucible token create --scope admin",
    )

    out = cli(exchange, me, "token", "revoke", "--force", "me")
    assert out.returncode == 0, out.stderr
    text = refused(cli(exchange, me, "token", "list"), "the token is not valid")
    assert "crucible down" not in text, text  # not an embedded exchange: no restart


def test_a_revoked_crucible_up_token_is_answered_with_the_restart(tmp_path: Path) -> None:
    env = {"CRUCIBLE_HOME": str(tmp_path / "home"), "CRUCIBLE_PORT": str(free_port())}

    def crucible(*args: str) -> subprocess.CompletedProcess[str]:
        return run_crucible(*args, env=env)

    try:
        up = crucible("up", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        tokens = json.loads(crucible("token", "list", "--json").stdout)
        mine = next(t["id"] for t in tokens if t["name"] == "crucible up")
        refused(crucible("token", "revoke", mine), "is the one this request was made with")
        assert crucible("token", "revoke", "--force", mine).returncode == 0
        refused(
            crucible("token", "list"),
            "the token is not valid",
            "crucible down && crucible up -d",
        )
        # The advice works: the restart writes a new token.
        assert crucible("down").returncode == 0
        assert crucible("up", "--detach").returncode == 0
        again = crucible("token", "list")
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        crucible("down")
