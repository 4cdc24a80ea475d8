"""A killed agent leaves none of a pod's processes running (the process runtime). The worker
dies with its agent; the pod's command ran on, orphaned and unbilled, and the processes it
started too, while the pod was marked failed. Now the command dies with its supervisor, and
the next agent on that directory ends what the command had started."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import crucible

from harness import Exchange, wait_for


@pytest.fixture
def ex(tmp_path: Path) -> Iterator[Exchange]:
    exchange = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    exchange.start_server()
    try:
        exchange.start_agent("host-a")
        yield exchange
    finally:
        exchange.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: only its parent has yet to read its status.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_agent_leaves_no_pod_process_running(ex: Exchange) -> None:
    client = ex.client(ex.owner_token("pod-owner"))
    pod = crucible.Pod.create(
        "left",
        command='sleep 600 & echo $! > "$HOME/child"; echo $$ > "$HOME/cmd"; exec sleep 601',
        client=client,
    )
    try:
        assert pod.wait("running", "failed", timeout_s=90).state == "running", pod.info()
        disk = next(ex.root.glob("agent-host-a/**/pods/*/disk"))
        wait_for(lambda: (disk / "cmd").exists() and (disk / "child").exists(), 30, "pids")
        command, child = int((disk / "cmd").read_text()), int((disk / "child").read_text())
        assert _alive(command) and _alive(child)
        ex.kill_agent("host-a")
        wait_for(lambda: not _alive(command), 30, "the command to die with its supervisor")
        ex.start_agent("host-a")  # the next agent on the same directory
        wait_for(lambda: not _alive(child), 30, "what the command started to be ended")
    finally:
        pod.delete()
        client.close()
