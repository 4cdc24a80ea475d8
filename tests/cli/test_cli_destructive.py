"""Commands that destroy what cannot be had back ask first: `pod rm` refuses a running pod
without --force (as `docker rm` does: `pod stop` keeps the disk); `volume delete`,
`dict clear|delete`, `queue clear|delete` and `host remove` ask yes/no on a terminal, take
--yes, and refuse without it when there is no terminal to ask. Through the real CLI against a
real server and agent."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Iterator

import pytest

from crucible.sdk._dicts import Dict

from cli_testlib import cli, one_host, refused
from harness import Exchange


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, str]]:
    with one_host(tmp_path_factory.mktemp("destructive")) as made:
        yield made


def on_terminal(
    ex: Exchange, token: str, answer: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The command with a terminal as its stdin, on which the user has typed ``answer``."""
    main, tty = pty.openpty()
    try:
        os.write(main, answer.encode() + b"\n")
        return cli(ex, token, *args, stdin=tty)
    finally:
        os.close(tty)
        os.close(main)


def test_pod_rm_refuses_a_running_pod_without_force(fleet: tuple[Exchange, str]) -> None:
    ex, token = fleet
    out = cli(ex, token, "pod", "create", "live", "--cpu", "0.1", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    refused(
        cli(ex, token, "pod", "rm", "live"),
        "pod live is running",
        "deletes it and its disk",
        "crucible pod stop live",
        "crucible pod rm --force live",
    )
    shown = json.loads(cli(ex, token, "pod", "show", "live", "--json").stdout)
    assert shown["state"] == "running", shown
    out = cli(ex, token, "pod", "delete", "-f", "live")
    assert out.returncode == 0 and "pod live deleted" in out.stdout, out.stderr
    # A pod that does not run is deleted as asked.
    assert cli(ex, token, "pod", "create", "idle", "--cpu", "0.1", "--wait").returncode == 0
    assert cli(ex, token, "pod", "stop", "idle").returncode == 0
    out = cli(ex, token, "pod", "rm", "idle")
    assert out.returncode == 0 and "pod idle deleted" in out.stdout, out.stderr


def test_volume_delete_asks_on_a_terminal_and_wants_yes_in_a_script(
    fleet: tuple[Exchange, str],
) -> None:
    ex, token = fleet

    def exists() -> bool:
        return "v1" in cli(ex, token, "volume", "list").stdout

    assert cli(ex, token, "volume", "create", "v1").returncode == 0
    refused(
        cli(ex, token, "volume", "delete", "v1"),
        "Delete volume 'v1' and all its versions?",
        "no terminal to ask on",
        "pass --yes",
    )
    assert exists()
    out = on_terminal(ex, token, "n", "volume", "delete", "v1")
    assert out.returncode == 1 and "Delete volume 'v1' and all its versions?" in out.stdout
    assert "Nothing was done" in out.stderr and exists(), out.stdout + out.stderr
    out = on_terminal(ex, token, "y", "volume", "delete", "v1")
    assert out.returncode == 0 and "deleted volume v1" in out.stdout, out.stdout + out.stderr
    assert not exists()
    assert cli(ex, token, "volume", "create", "v1").returncode == 0
    assert cli(ex, token, "volume", "delete", "--yes", "v1").returncode == 0
    assert not exists()


def test_dicts_queues_and_hosts_are_not_cleared_or_removed_unasked(
    fleet: tuple[Exchange, str],
) -> None:
    ex, token = fleet
    d = Dict.from_name("d1", create_if_missing=True, client=ex.client(token))
    d["k"] = 1
    for args, question in (
        (["dict", "clear", "d1"], "Remove every entry of dict 'd1'?"),
        (["dict", "delete", "d1"], "Delete dict 'd1' and its entries?"),
        (["queue", "clear", "q1", "--all"], "Remove the items of every partition of queue 'q1'?"),
        (["queue", "delete", "q1"], "Delete queue 'q1' and its items?"),
        (["host", "remove", "host-a"], "off the exchange for good?"),
    ):
        refused(cli(ex, token, *args), question, "pass --yes")
    assert d.get("k") == 1
    assert cli(ex, token, "dict", "clear", "-y", "d1").returncode == 0
    assert d.get("k") is None
    # --yes goes on to the server, which has its own word on a host still running.
    out = cli(ex, token, "host", "remove", "--yes", "host-a")
    assert out.returncode == 1 and "pass --yes" not in out.stderr, out.stderr
