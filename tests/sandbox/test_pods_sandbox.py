"""Pods in the bwrap runtime: a stranger's pod runs on a fully isolating host, in its disk
bound at /pod (its $HOME and working directory), which survives stop/start; an OCI
image that cannot be pulled fails the pod with a message that says so, and costs nothing
(pods from images that pull: tests/sandbox/test_oci_images.py)."""

from __future__ import annotations

import shlex
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
    pod = crucible.Pod.create(
        "reach-me", command="exec sleep 600", env={"MY_VAR": "hello"}, client=client
    )
    try:
        info = pod.wait("running", "failed", timeout_s=90)
        assert info.state == "running" and info.container_id, info
        code, out, err = run_exec(sandboxed, token, info.container_id, ["sh", "-c", "pwd; id -u"])
        assert code == 0, err
        lines = out.decode().split()
        assert lines[0] == "/pod" and lines[1] != "0", out  # its disk, not root
        # It sees what the pod's command sees: its --env, its name, its python.
        shown = 'echo "$MY_VAR $CRUCIBLE_POD_NAME $HOME"; command -v python'
        code, out, err = run_exec(sandboxed, token, info.container_id, ["sh", "-c", shown])
        assert code == 0, err
        said, python = out.decode().strip().splitlines()
        assert said == "hello reach-me /pod", said
        assert python.endswith("/python"), python
        # What a session starts itself imports the agent's Crucible, even from a source tree
        # on PYTHONPATH (ssh sessions and fine-tune trainers failed: "No module named
        # 'crucible'").
        source = Path(crucible.__file__).resolve().parents[1]
        if source.name not in ("site-packages", "dist-packages"):
            code, out, err = run_exec(
                sandboxed, token, info.container_id, ["sh", "-c", 'echo "$PYTHONPATH"']
            )
            assert out.decode().strip() == str(source), (out, err)
    finally:
        pod.delete()
        client.close()


def test_a_sandboxed_pods_published_port_at_its_url(sandboxed: Exchange) -> None:
    """A stranger's pod in bwrap serves HTTP in its own network namespace; the pod's URL
    reaches it with the full path, and the pod knows that path from its environment."""
    import httpx

    token = sandboxed.tenant_token(f"web-{uuid.uuid4().hex[:6]}")
    app = (
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = (self.path + ' ' + os.environ['CRUCIBLE_PORT_8888_PATH']).encode()\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "http.server.HTTPServer(('127.0.0.1', 8888), H).serve_forever()\n"
    )
    client = sandboxed.client(token)
    pod = crucible.Pod.create(
        "sandboxed-web",
        command=f"exec python3 -c {shlex.quote(app)}",
        ports=["8888/http"],
        client=client,
    )
    try:
        assert pod.wait("running", "failed", timeout_s=90).state == "running", pod.info()
        prefix = f"/pods/{pod.id}/ports/8888/"

        def answer() -> str:
            r = httpx.get(pod.port_link(8888).replace("/?", "/x?"), timeout=30)
            return r.text if r.status_code == 200 else ""

        seen = wait_for(answer, 60, "the pod's web server")
        assert seen == f"{prefix}x {prefix}"
    finally:
        pod.delete()
        client.close()
