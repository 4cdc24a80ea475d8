"""`crucible pod create` and `pod start` say what the exchange knows about placing the pod:
a pod no host could ever run fails the command at once (exit 1, the scheduler's reason), and
`--wait` waits until it runs, fails, or `--timeout` passes. Through the real CLI against a
real server and agent (two fake H100s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import crucible

from cli_testlib import cli, one_host, refused
from harness import Exchange


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, str]]:
    with one_host(tmp_path_factory.mktemp("placement"), fake_gpus="2xH100") as made:
        yield made


def test_a_pod_no_host_can_ever_run_fails_create_and_start(fleet: tuple[Exchange, str]) -> None:
    ex, token = fleet
    for name, args in (("nine", ["--gpu", "H100:9"]), ("wide", ["--cpu", "1000"])):
        out = cli(ex, token, "pod", "create", name, *args)
        refused(out, f"pod '{name}' was not created", "no host can ever run this pod")
        # Not left behind: a corrected ask under the same name works (probe4 F1: it was
        # refused, "you already have a pod called ...").
        assert cli(ex, token, "pod", "show", name).returncode == 1
    # --wait does not wait for what cannot happen.
    out = cli(ex, token, "pod", "create", "nine2", "--gpu", "H100:9", "--wait")
    refused(out, "was not created")
    # A pod made from Python stays pending (a host that can run it may join), says so when
    # shown, and `pod start` of it fails the same way.
    client = ex.client(token)
    try:
        crucible.Pod.create("stuck", gpu="H100:9", client=client)
    finally:
        client.close()
    shown = json.loads(cli(ex, token, "pod", "show", "stuck", "--json").stdout)
    assert shown["state"] == "pending" and shown["unplaceable"] is True, shown
    assert cli(ex, token, "pod", "stop", "stuck").returncode == 0
    refused(
        cli(ex, token, "pod", "start", "stuck"),
        "pod 'stuck' cannot be placed",
        "H100:9",
        "crucible pod rm stuck",
    )
    assert cli(ex, token, "pod", "rm", "stuck").returncode == 0


def test_wait_waits_until_the_pod_runs_or_fails(fleet: tuple[Exchange, str]) -> None:
    ex, token = fleet
    out = cli(ex, token, "pod", "create", "up", "--gpu", "H100:1", "--cpu", "0.1", "--wait")
    assert out.returncode == 0 and "pod up (" in out.stdout and "): running;" in out.stdout, (
        out.stdout + out.stderr
    )
    # An image no registry serves (port 1): the pod fails before it ever runs.
    out = cli(
        ex, token, "pod", "create", "bad", "--cpu", "0.1", "--image", "127.0.0.1:1/no:1", "--wait"
    )
    refused(out, "pod 'bad' is failed", "127.0.0.1:1/no:1")
    # A pod that fits, without --wait: exit 0 and the state it reached.
    out = cli(ex, token, "pod", "create", "fits", "--cpu", "0.1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["unplaceable"] is False, out.stderr
    assert cli(ex, token, "pod", "stop", "up").returncode == 0
    out = cli(ex, token, "pod", "start", "up", "--wait", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "running", out.stderr
    for name in ("up", "bad", "fits"):
        assert cli(ex, token, "pod", "rm", "--force", name).returncode == 0


def test_a_fleet_not_joined_yet_keeps_create_working(tmp_path: Path) -> None:
    """No host registered: the pod waits for one (exit 0); --wait gives up at --timeout."""
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        token = ex.owner_token("early")
        out = cli(ex, token, "pod", "create", "early")
        assert out.returncode == 0 and "pod early (" in out.stdout, out.stdout + out.stderr
        assert "no host is registered" in " ".join(out.stdout.split())
        out = cli(ex, token, "pod", "create", "later", "--wait", "--timeout", "1")
        refused(out, "pod 'later' is pending after 1 s, not running", "no host is registered")
        out = cli(ex, token, "pod", "create", "odd", "--timeout", "1")
        assert out.returncode == 2 and "--timeout goes with --wait" in out.stderr, out.stderr
        assert cli(ex, token, "pod", "show", "odd").returncode == 1  # nothing was created
    finally:
        ex.close()
