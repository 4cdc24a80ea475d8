"""Pods in the bwrap runtime: a stranger's pod runs on a fully isolating host, in its disk
bound at /pod (its $HOME and working directory), which survives stop/start; an OCI
image that cannot be pulled fails the pod with a message that says so, and costs nothing
(pods from images that pull: tests/sandbox/test_oci_images.py)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import crucible
from access_testlib import run_exec

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


def test_a_pod_whose_image_cannot_be_pulled_fails_clearly_and_costs_nothing(
    sandboxed: Exchange, tenant: Any
) -> None:
    # Nothing listens on port 1: the registry is unreachable.
    pod = crucible.Pod.create("imaged", image="127.0.0.1:1/nobody/none:v1", client=tenant)
    info = pod.wait("failed", "running", timeout_s=90)
    assert info.state == "failed", info
    assert "127.0.0.1:1" in (info.reason or ""), info.reason
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


def test_a_session_in_a_sandboxed_pod_starts_in_its_disk(sandboxed: Exchange) -> None:
    token = sandboxed.tenant_token(f"pod-exec-{uuid.uuid4().hex[:6]}")
    client = sandboxed.client(token)
    pod = crucible.Pod.create("reach-me", command="exec sleep 600", client=client)
    try:
        info = pod.wait("running", "failed", timeout_s=90)
        assert info.state == "running" and info.container_id, info
        code, out, err = run_exec(sandboxed, token, info.container_id, ["sh", "-c", "pwd; id -u"])
        assert code == 0, err
        lines = out.decode().split()
        assert lines[0] == "/pod" and lines[1] != "0", out  # its disk, not root
    finally:
        pod.delete()
        client.close()
