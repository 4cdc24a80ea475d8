"""Functions from OCI images, end to end: a real exchange whose bwrap agent pulls from a real
registry on loopback (docker-registry) and runs the image as the sandbox's root file system
with the worker injected. The Python image is assembled from this machine's system Python of
the tests' own minor version."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

import crucible
from crucible.protocol.access import AccessOpen
from crucible.sdk import _tunnels
from oci_testlib import (
    SYSTEM_PYTHON,
    Entry,
    Registry,
    TokenGateway,
    layer,
    push_image,
    python_rootfs_layers,
    run_registry,
)

from harness import Exchange

# Any valid public key: the no-shell refusal comes after the account's key check.
_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM41E+AupwVlrn50hORcFmAoByq3DKIwXHNbpb/gDl+y oci"


@pytest.fixture(scope="module")
def oci_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Exchange, Registry, TokenGateway]]:
    bwrap_or_skip()
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"the test's Python image is assembled from {SYSTEM_PYTHON}")
    root = tmp_path_factory.mktemp("oci")
    with run_registry(root / "registry") as reg:
        site = sysconfig.get_paths()["platlib"]
        base = python_rootfs_layers([site])
        app_layer = layer(
            [
                Entry("etc/os-release", b"ID=crucible-test-image\n"),
                Entry("srv", kind="dir"),
            ]
        )
        env = ["PATH=/usr/bin:/bin", "IMAGE_VAR=from-image"]
        push_image(
            reg, "test/python", "3.11", [*base, app_layer], env=env, workdir="/srv", user="app"
        )
        push_image(reg, "private/python", "3.11", [*base, app_layer], env=env)
        # A pod's image: no shell, its own ENTRYPOINT and CMD.
        pod_cmd = (
            "import os, time; print('image-cmd', open('/etc/os-release').read().strip(), "
            "os.environ.get('IMAGE_VAR'), os.getcwd(), flush=True); time.sleep(600)"
        )
        push_image(
            reg,
            "test/pod",
            "v1",
            [*base, app_layer],
            env=env,
            entrypoint=[SYSTEM_PYTHON, "-c"],
            cmd=[pod_cmd],
        )
        push_image(reg, "test/nopython", "v1", [layer([Entry("etc/os-release", b"ID=x\n")])])
        # Pushed now, pulled only by the pulling test: its config blob is not in any cache.
        push_image(
            reg, "test/pulled", "v1", [*base, app_layer], env=[*env, "PULLED=1"],
            entrypoint=[SYSTEM_PYTHON, "-c"], cmd=["import time; time.sleep(600)"],
        )  # fmt: skip
        gw = TokenGateway(upstream=reg.url).start()
        ex = Exchange(
            root,
            f"sqlite:///{root / 'store.db'}",
            **SANDBOX_ENV,
            CRUCIBLE_OCI_INSECURE_REGISTRIES=f"{reg.host},{gw.host}",
        )
        try:
            ex.start_server()
            ex.start_agent("host-a")
            yield ex, reg, gw
        finally:
            ex.close()
            gw.stop()


@pytest.fixture(scope="module")
def app_oci(oci_world: tuple[Exchange, Registry, TokenGateway]) -> Iterator[Any]:
    _, reg, gw = oci_world
    mp = pytest.MonkeyPatch()
    mp.setenv("OCI_TEST_PYTHON_REF", f"{reg.host}/test/python:3.11")
    mp.setenv("OCI_TEST_PRIVATE_REF", f"{gw.host}/private/python:3.11")
    mp.setenv("OCI_TEST_NOPY_REF", f"{reg.host}/test/nopython:v1")
    mp.setenv("OCI_TEST_MISSING_REF", f"{reg.host}/test/python:no-such-tag")
    sys.modules.pop("app_oci", None)
    module = importlib.import_module("app_oci")
    yield module
    mp.undo()
    sys.modules.pop("app_oci", None)


@pytest.fixture(scope="module")
def tenant(oci_world: tuple[Exchange, Registry, TokenGateway]) -> Iterator[Any]:
    ex = oci_world[0]
    client = ex.client(ex.tenant_token(f"oci-{uuid.uuid4().hex[:6]}"))
    yield client
    client.close()


def test_function_runs_in_the_image(app_oci: Any, tenant: Any) -> None:
    with app_oci.app.run(client=tenant):
        seen = app_oci.inspect.remote()
        again = app_oci.inspect.remote()
    assert seen["os_release"] == "ID=crucible-test-image\n"  # the image's /etc, not the host's
    assert seen["executable"] == SYSTEM_PYTHON and seen["version"] == list(sys.version_info[:2])
    assert seen["uid"] == 1234  # USER app, from the image's /etc/passwd
    assert seen["cwd"] == "/srv"  # WORKDIR
    assert seen["image_var"] == "from-image" and seen["from_spec"] == "spec"  # ENV, then .env()
    assert seen["path"] == "/usr/bin:/bin"
    assert seen["host_paths_seen"] == []  # nothing of the host's file system
    assert seen["crucible_file"].startswith("/crucible/lib/")  # the injected worker
    assert again["os_release"] == seen["os_release"]


def test_private_image_through_a_token_server(
    app_oci: Any, tenant: Any, oci_world: tuple[Exchange, Registry, TokenGateway]
) -> None:
    gw = oci_world[2]
    crucible.Secret.create(
        "regcreds",
        {"REGISTRY_USERNAME": gw.user, "REGISTRY_PASSWORD": gw.password},
        overwrite=True,
        client=tenant,
    )
    with app_oci.app.run(client=tenant):
        seen = app_oci.inspect_private.remote()
    assert seen["os_release"] == "ID=crucible-test-image\n"
    assert any(p.startswith("/token?") for p in gw.paths)
    ex = oci_world[0]
    logs = "".join(p.read_text(errors="replace") for p in ex.root.rglob("*.log"))
    assert gw.password not in logs  # credentials never reach a log


def test_clear_errors_for_bad_images(app_oci: Any, tenant: Any) -> None:
    with app_oci.app.run(client=tenant):
        with pytest.raises(crucible.ImageUnsupportedError, match=r"no Python.*>= 3\.11"):
            app_oci.never_runs_without_python.remote()
        with pytest.raises(crucible.ImageNotFoundError, match="no-such-tag"):
            app_oci.never_runs_missing.remote()

    # Nothing is charged for containers whose image did not pull: they end by themselves
    # once they failed the calls, at their start, so no metered time remains on the bill.
    # (Before the fix ~1 s of each was billed, for good.)
    names = ("never_runs_without_python", "never_runs_missing")
    deadline = time.monotonic() + 30
    while True:
        bill = tenant.transport.request("GET", "/v1/bill")["lines"]
        costs = [line["cost_micros"] for line in bill if line["function_name"] in names]
        if not any(costs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not any(costs)


def test_a_pod_runs_its_images_entrypoint(
    tenant: Any, oci_world: tuple[Exchange, Registry, TokenGateway]
) -> None:
    reg = oci_world[1]
    pod = crucible.Pod.create("from-image", image=f"{reg.host}/test/pod:v1", client=tenant)
    try:
        info = pod.wait("running", "failed", timeout_s=120)
        assert info.state == "running", info
        expected = "image-cmd ID=crucible-test-image from-image /pod"

        def printed() -> bool:
            return any(expected in x.line for x in pod.logs())

        deadline = time.monotonic() + 60
        while not printed() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert printed(), [x.line for x in pod.logs()]
        # SSH into an image without a shell is refused with the way out, not a broken
        # handshake (tests/sandbox/test_oci_ssh.py: SSH into images that have one).
        token = tenant.transport._headers["Authorization"].removeprefix("Bearer ")
        tenant.transport.post("/v1/ssh-keys", {"public_key": _PUBLIC_KEY})
        ex = oci_world[0]
        with pytest.raises(crucible.InvalidRequestError, match="has no shell"):
            _tunnels.AccessSession(ex.url, token, info.container_id, AccessOpen(kind="ssh"))
    finally:
        pod.delete()


def test_a_pod_shows_pulling_while_its_image_is_pulled(
    tenant: Any, oci_world: tuple[Exchange, Registry, TokenGateway], tmp_path: Path
) -> None:
    """pending → pulling (its host reported the pull) → starting → running; the pull is not
    metered: the container has no start until the image is there."""
    gw = oci_world[2]
    gw.hold, gw.require_token = threading.Event(), False
    seen: list[str] = []
    pod = crucible.Pod.create("pulled", image=f"{gw.host}/test/pulled:v1", client=tenant)
    try:
        pulling = pod.wait("pulling", "running", "failed", timeout_s=60)
        assert pulling.state == "pulling", pulling.reason
        assert pulling.cost_micros == 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        env.update(
            CRUCIBLE_HOME=str(tmp_path / "cli-home"),
            CRUCIBLE_SERVER_URL=oci_world[0].url,
            CRUCIBLE_TOKEN=tenant.transport._headers["Authorization"].removeprefix("Bearer "),
            COLUMNS="120",
        )
        shown = subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", "pod", "show", "pulled"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert "pulling" in shown.stdout, shown.stdout + shown.stderr
        gw.hold.set()
        deadline = time.monotonic() + 120
        while (state := pod.info().state) != "running" and time.monotonic() < deadline:
            if not seen or seen[-1] != state:
                seen.append(state)
            time.sleep(0.05)
        assert state == "running", seen
        assert set(seen) <= {"pulling", "starting"}, seen
    finally:
        gw.hold.set()
        gw.hold, gw.require_token = None, True
        pod.delete()
