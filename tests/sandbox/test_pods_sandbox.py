"""Pods in the bwrap runtime: a stranger's pod runs on a fully isolating host, in its disk
bound at /pod (its $HOME and working directory), which survives stop/start; an OCI
reference this agent cannot pull yet fails the pod at start with a message that says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import crucible

from harness import Exchange, wait_for


def _lines(pod: crucible.Pod) -> list[str]:
    return [x.line for x in pod.logs()]


def test_a_strangers_pod_runs_in_a_sandbox_with_its_disk(sandboxed: Exchange, tenant: Any) -> None:
    pod = crucible.Pod.create(
        "sandboxed",
        disk="256MiB",
        command='echo x >> count; echo "pwd=$(pwd) home=$HOME runs=$(wc -l < count)"; '
        "exec sleep 600",
        client=tenant,
    )
    assert pod.wait("running", "failed", timeout_s=90).state == "running", pod.info()
    wait_for(lambda: "pwd=/pod home=/pod runs=1" in _lines(pod), 30, "the first run")
    pod.stop()
    assert pod.wait("stopped", "failed", timeout_s=30).state == "stopped"
    pod.start()
    assert pod.wait("running", "failed", timeout_s=90).state == "running"
    wait_for(lambda: "pwd=/pod home=/pod runs=2" in _lines(pod), 30, "the second run")
    pod.delete()


def test_a_pod_with_an_image_fails_clearly_until_oci_pulls_land(
    sandboxed: Exchange, tenant: Any
) -> None:
    pod = crucible.Pod.create("imaged", image="python:3.12-slim", client=tenant)
    info = pod.wait("failed", "running", timeout_s=60)
    assert info.state == "failed"
    assert "cannot run OCI image 'python:3.12-slim'" in (info.reason or "")
    assert "without --image" in (info.reason or "")
    assert info.cost_micros == 0
    pod.delete()


def test_a_pods_volume_holds_its_latest_version(
    sandboxed: Exchange, tenant: Any, tmp_path: Path
) -> None:
    vol = crucible.Volume.from_name("pod-data", create_if_missing=True, client=tenant)
    (tmp_path / "seed.txt").write_text("seeded from the laptop")
    with vol.batch_upload() as up:
        up.put_file(tmp_path / "seed.txt", "seed.txt")
    pod = crucible.Pod.create(
        "with-volume",
        volumes={"/data": "pod-data"},
        command='echo "read: $(cat /data/seed.txt)"; exec sleep 600',
        client=tenant,
    )
    assert pod.wait("running", "failed", timeout_s=90).state == "running", pod.info()
    wait_for(lambda: "read: seeded from the laptop" in _lines(pod), 30, "the volume's file")
    pod.delete()
