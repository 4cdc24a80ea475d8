"""Reaching a pod by its name (real server, agent and worker processes): `crucible pod exec`
and plain OpenSSH through `crucible pod proxy %h` with the key the pod was created with,
and a clear error for a pod that is not running."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import crucible
from access_testlib import make_key, ssh_available, ssh_env

from harness import Exchange


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("pod-access")
    exchange = Exchange(root, f"sqlite:///{root / 'store.db'}")
    exchange.start_server()
    try:
        exchange.start_agent("host-a")
        yield exchange
    finally:
        exchange.close()


def _cli(ex: Exchange, token: str, tmp: Path, *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=ssh_env(ex, token, tmp / "cli-home"),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_pod_exec_and_ssh_by_name(ex: Exchange, tmp_path: Path) -> None:
    token = ex.owner_token("pod-owner")
    client = ex.client(token)
    key = make_key(tmp_path, "podkey")
    pod = crucible.Pod.create(
        "reachable",
        command='echo ready > "$CRUCIBLE_POD_DISK/flag"; exec sleep 600',
        ssh_keys=[(tmp_path / "podkey.pub").read_text()],
        env={"MY_VAR": "hello"},
        client=client,
    )
    try:
        assert pod.wait("running", "failed", timeout_s=90).state == "running", pod.info()
        run = _cli(ex, token, tmp_path, "pod", "exec", "reachable", "--", "sh", "-c", "pwd; exit 4")
        assert run.returncode == 4, run.stderr
        assert run.stdout.strip().endswith("/disk"), run.stdout  # the pod's disk
        # A session sees what the pod's command sees: its --env, its name, its python
        # (`pod exec train -- python ...` answered "python: not found").
        shown = 'echo "$MY_VAR $CRUCIBLE_POD_NAME $HOME"; command -v python'
        run = _cli(ex, token, tmp_path, "pod", "exec", "reachable", "--", "sh", "-c", shown)
        assert run.returncode == 0, run.stderr
        said, python = run.stdout.strip().splitlines()
        assert said.startswith("hello reachable ") and said.endswith("/disk"), said
        assert python == str(Path(sys.executable).parent / "python"), python

        if ssh_available():
            proxy = f"{sys.executable} -m crucible.cli.main pod proxy %h"
            argv = [
                "ssh", "-o", f"ProxyCommand={proxy}",
                "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                "-i", str(key), "crucible@reachable", "echo via-ssh",
            ]  # fmt: skip
            ssh = subprocess.run(
                argv,
                env=ssh_env(ex, token, tmp_path / "cli-home"),
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert ssh.returncode == 0 and ssh.stdout.strip() == "via-ssh", ssh.stderr

        pod.stop()
        pod.wait("stopped", timeout_s=60)
        run = _cli(ex, token, tmp_path, "pod", "exec", "reachable", "--", "true")
        assert run.returncode == 1
        assert "not running" in run.stderr and "crucible pod start reachable" in run.stderr
        run = _cli(ex, token, tmp_path, "pod", "exec", "no-such-pod", "--", "true")
        assert run.returncode == 1 and "no-such-pod" in run.stderr
    finally:
        pod.delete()
        client.close()


def test_pod_ssh_without_any_key_says_so_before_starting_ssh(ex: Exchange, tmp_path: Path) -> None:
    """The server would refuse the session, and ssh would bury that under its own errors:
    `crucible pod ssh` says what is missing and does not start ssh."""
    token = ex.owner_token("keyless")
    client = ex.client(token)
    pod = crucible.Pod.create("keyless", command="exec sleep 600", client=client)
    try:
        assert pod.wait("running", "failed", timeout_s=90).state == "running", pod.info()
        assert pod.info().ssh_key_count == 0
        run = _cli(ex, token, tmp_path, "pod", "ssh", "keyless", "--", "true")
        assert run.returncode == 1, run.stderr
        text = " ".join(run.stderr.split())
        assert "no SSH key can open pod keyless" in text and "crucible ssh-key add" in text
        assert "kex_exchange" not in text and "Connection closed" not in text
    finally:
        pod.delete()
        client.close()
