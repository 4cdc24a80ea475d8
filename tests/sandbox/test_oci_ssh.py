"""SSH into pods that run an OCI image, end to end: a real exchange whose bwrap agent pulls
images these tests build into a real registry on loopback (docker-registry), and plain
OpenSSH through `crucible pod proxy %h`. The agent brings its own SSH server (the host's
dropbear through its own loader, agent/ssh_bundle.py): the images hold no SSH server, and
Crucible's Python package is not importable in them.

Images (each with the Python the pod supervisor needs, assembled from this machine's):
- a busybox image: only Debian's static busybox as its shell, a numeric USER that its
  /etc/passwd does not name, an ENV with its own PATH, a WORKDIR;
- a glibc image running as root with bash and rsync (and /etc/shells listing bash);
- an image with no shell at all;
- a busybox image with no Python at all: a pod from it runs its supervisor with the agent's
  own interpreter (agent/python_bundle.py), and its command with the image's environment."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

import crucible
from access_testlib import NEEDS_SSH, make_key, run_exec, ssh_available, ssh_env
from crucible.protocol.access import AccessOpen
from crucible.sdk import _tunnels
from oci_testlib import (
    SYSTEM_PYTHON,
    Entry,
    Registry,
    layer,
    push_image,
    python_rootfs_layers,
    run_registry,
)

from harness import Exchange

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
_APPLETS = ("sh", "echo", "cat", "env", "id", "pwd", "ls", "grep", "sleep", "true")
_SLEEP = ["import time; time.sleep(900)"]


def _ldd(path: str) -> list[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    return [p for p in out.split() if p.startswith("/") and os.path.exists(p)]


def _files_layer(paths: list[str], extra: list[Entry]) -> bytes:
    """Host files at their own paths (``/usr/bin/x``), their directories first."""
    entries: list[Entry] = []
    dirs: set[str] = set()
    for path in sorted(set(paths)):
        name = path.lstrip("/")
        parent = os.path.dirname(name)
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in dirs:
                dirs.add(d)
                entries.append(Entry(d, kind="dir"))
        entries.append(Entry(name, Path(os.path.realpath(path)).read_bytes(), mode=0o755))
    return layer(entries + extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, Registry]]:
    bwrap_or_skip()
    if not ssh_available():
        pytest.skip(NEEDS_SSH)
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"the test's Python image is assembled from {SYSTEM_PYTHON}")
    root = tmp_path_factory.mktemp("oci-ssh")
    with run_registry(root / "registry") as reg:
        base = python_rootfs_layers([sysconfig.get_paths()["platlib"]])
        entry = [SYSTEM_PYTHON, "-c"]
        if BUSYBOX is not None:
            box = [Entry("bin", kind="dir"), Entry("srv", kind="dir")]
            box.append(Entry("bin/busybox", Path(BUSYBOX).read_bytes(), mode=0o755))
            box += [Entry(f"bin/{a}", kind="symlink", target="busybox") for a in _APPLETS]
            box += [
                Entry("opt", kind="dir"),
                Entry("opt/tools", kind="dir"),
                Entry("opt/tools/hello", b"#!/bin/sh\necho hello-from-image-path\n", mode=0o755),
            ]
            push_image(
                reg, "test/busybox", "v1", [*base, layer(box)],
                env=["PATH=/opt/tools:/usr/bin:/bin", "IMAGE_VAR=from-image"],
                workdir="/srv", user="4321", entrypoint=entry, cmd=_SLEEP,
            )  # fmt: skip
            # No Python, no libc: only the static busybox.
            push_image(
                reg, "test/nopython", "v1", [layer(box)],
                env=["PATH=/opt/tools:/usr/bin:/bin", "IMAGE_VAR=no-python"],
                workdir="/srv", user="4321", entrypoint=["/bin/sh", "-c"],
                cmd=['echo "cmd-ran $IMAGE_VAR $(pwd) $(id -u)"; exec sleep 900'],
            )  # fmt: skip
            # Nothing to run: the pod waits until stopped.
            push_image(reg, "test/idle", "v1", [layer(box)], env=["IMAGE_VAR=idle"])
        tools = ["/bin/bash"] + ([shutil.which("rsync") or ""] if shutil.which("rsync") else [])
        libs = [lib for t in tools for lib in _ldd(t)]
        shells = Entry("etc/shells", b"/bin/sh\n/bin/bash\n/usr/bin/bash\n")
        push_image(
            reg, "test/bash", "v1", [*base, _files_layer(tools + libs, [shells])],
            env=["PATH=/usr/local/bin:/usr/bin:/bin", "IMAGE_VAR=bash-image"],
            entrypoint=entry, cmd=_SLEEP,
        )  # fmt: skip
        push_image(reg, "test/noshell", "v1", base, entrypoint=entry, cmd=_SLEEP)
        ex = Exchange(
            root,
            f"sqlite:///{root / 'store.db'}",
            **SANDBOX_ENV,
            CRUCIBLE_OCI_INSECURE_REGISTRIES=reg.host,
        )
        try:
            ex.start_server()
            ex.start_agent("host-a")
            yield ex, reg
        finally:
            ex.close()


class Tenant:
    def __init__(self, ex: Exchange, tmp: Path) -> None:
        self.ex = ex
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.token = ex.tenant_token(f"ssh-{uuid.uuid4().hex[:6]}")
        self.client = ex.client(self.token)
        self.key = make_key(tmp, "id_test")
        self.client.transport.post(
            "/v1/ssh-keys", {"public_key": (tmp / "id_test.pub").read_text()}
        )

    def ssh_opts(self, key: Path | None = None) -> list[str]:
        proxy = f"{sys.executable} -m crucible.cli.main pod proxy %h"
        return [
            "-o", f"ProxyCommand={proxy}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.tmp / 'known_hosts'}",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-i", str(key or self.key),
        ]  # fmt: skip

    def run(self, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            input=stdin,
            env=ssh_env(self.ex, self.token, self.tmp / "cli-home"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ssh(self, pod: str, command: str, key: Path | None = None) -> Any:
        return self.run(["ssh", *self.ssh_opts(key), f"crucible@{pod}", command])

    def pod(self, name: str, image: str, command: str | None = None) -> Any:
        pod = crucible.Pod.create(name, image=image, command=command, client=self.client)
        info = pod.wait("running", "failed", timeout_s=180)
        assert info.state == "running", info
        return pod


@pytest.fixture
def tenant(world: tuple[Exchange, Registry], tmp_path: Path) -> Iterator[Tenant]:
    t = Tenant(world[0], tmp_path)
    yield t
    t.client.close()


@pytest.mark.skipif(BUSYBOX is None, reason="needs Debian's busybox-static (scripts/setup dev)")
def test_ssh_into_a_busybox_image(world: tuple[Exchange, Registry], tenant: Tenant) -> None:
    """Static busybox as the only shell, a uid its /etc/passwd lacks: commands run with the
    image's ENV, PATH and WORKDIR, exit codes come back, nothing of the server's loader leaks
    into the session, and scp (SFTP) copies a file in and back."""
    reg = world[1]
    pod = tenant.pod("busy", f"{reg.host}/test/busybox:v1")
    try:
        script = (
            'echo "var=$IMAGE_VAR"; echo "path=$PATH"; echo "pwd=$(pwd)"; echo "uid=$(id -u)"; '
            'echo "home=$HOME"; hello; env | grep -E "^(LD_|NSS_WRAPPER|CRUCIBLE_SSH)" '
            '|| echo "no-leak"; exit 3'
        )
        run = tenant.ssh("busy", script)
        assert run.returncode == 3, run.stderr
        lines = run.stdout.splitlines()
        assert "var=from-image" in lines, run.stdout
        assert "path=/opt/tools:/usr/bin:/bin" in lines, run.stdout
        assert "pwd=/srv" in lines, run.stdout  # the image's WORKDIR
        assert "uid=4321" in lines, run.stdout
        assert "home=/pod" in lines, run.stdout  # the pod's disk
        assert "hello-from-image-path" in lines, run.stdout
        assert "no-leak" in lines, run.stdout

        # A login without a command: the image's shell reads the session's input.
        login = tenant.run(
            ["ssh", *tenant.ssh_opts(), "-T", "crucible@busy"],
            stdin='echo "login-$IMAGE_VAR"; exit 5\n',
        )
        assert login.returncode == 5 and "login-from-image" in login.stdout, login.stderr
        # A terminal made inside the sandbox (ssh -t), with the client's TERM.
        tty = tenant.run(
            ["ssh", *tenant.ssh_opts(), "-tt", "crucible@busy", 'echo "t=$TERM"; exit 4']
        )
        assert tty.returncode == 4 and "t=" in tty.stdout, tty.stderr

        data = os.urandom(300_000)
        (tenant.tmp / "up.bin").write_bytes(data)
        opts = tenant.ssh_opts()
        up = tenant.run(["scp", *opts, str(tenant.tmp / "up.bin"), "crucible@busy:/pod/up.bin"])
        assert up.returncode == 0, up.stderr
        back = tenant.tmp / "back.bin"
        down = tenant.run(["scp", *opts, "crucible@busy:/pod/up.bin", str(back)])
        assert down.returncode == 0, down.stderr
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()

        # A key the account never registered: refused by SSH itself.
        other = make_key(tenant.tmp, "id_other")
        wrong = tenant.ssh("busy", "true", key=other)
        assert wrong.returncode == 255
        assert "Permission denied (publickey)" in wrong.stderr, wrong.stderr
    finally:
        pod.delete()


@pytest.mark.skipif(
    not glob.glob("/usr/lib/*/libuid_wrapper.so"),
    reason="an image that runs as root needs libuid-wrapper on the host (scripts/setup dev)",
)
def test_ssh_into_a_glibc_image_as_root_with_rsync(
    world: tuple[Exchange, Registry], tenant: Tenant
) -> None:
    """An image that runs as root, with bash (listed in its /etc/shells) and rsync; another
    account cannot reach the pod, by name or by container id."""
    reg = world[1]
    pod = tenant.pod("bashy", f"{reg.host}/test/bash:v1")
    try:
        run = tenant.ssh("bashy", 'echo "$SHELL $IMAGE_VAR $UID $(pwd) $BASH_VERSION" ; exit 7')
        assert run.returncode == 7, run.stderr
        shell, var, uid, cwd, version = run.stdout.split()
        assert (shell, var, uid) == ("/bin/bash", "bash-image", "0") and version, run.stdout
        assert cwd == "/pod", run.stdout  # no WORKDIR in the image: the pod's disk, not /

        # Another account's pod does not exist for this one.
        stranger = Tenant(world[0], tenant.tmp / "stranger")
        try:
            refused = stranger.ssh("bashy", "true")
            assert refused.returncode == 255 and "bashy" in refused.stderr, refused.stderr
            info = pod.info()
            with pytest.raises(crucible.NotFoundError):
                _tunnels.AccessSession(
                    world[0].url, stranger.token, info.container_id, AccessOpen(kind="ssh")
                )
        finally:
            stranger.client.close()

        if shutil.which("rsync") is None:
            return
        src = tenant.tmp / "tree"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("alpha\n")
        (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
        rsh = "ssh " + " ".join(f"'{o}'" for o in tenant.ssh_opts())
        up = tenant.run(["rsync", "-a", "-e", rsh, f"{src}/", "crucible@bashy:/pod/tree/"])
        assert up.returncode == 0, up.stderr
        back = tenant.tmp / "tree-back"
        down = tenant.run(["rsync", "-a", "-e", rsh, "crucible@bashy:/pod/tree/", f"{back}/"])
        assert down.returncode == 0, down.stderr
        assert (back / "a.txt").read_text() == "alpha\n"
        assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    finally:
        pod.delete()


def test_ssh_into_an_image_without_a_shell_says_so(
    world: tuple[Exchange, Registry], tenant: Tenant
) -> None:
    reg = world[1]
    pod = tenant.pod("bare", f"{reg.host}/test/noshell:v1")
    try:
        run = tenant.ssh("bare", "true")
        assert run.returncode == 255
        assert "has no shell" in run.stderr and "crucible pod exec" in run.stderr, run.stderr
    finally:
        pod.delete()


def _log_lines(pod: Any) -> list[str]:
    return [x.line for x in pod.logs()]


def _wait_logs(pod: Any, wanted: str, count: int = 1) -> list[str]:
    deadline = time.monotonic() + 60
    while (lines := _log_lines(pod)).count(wanted) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lines.count(wanted) >= count, lines
    return lines


@pytest.mark.skipif(BUSYBOX is None, reason="needs Debian's busybox-static (scripts/setup dev)")
def test_a_pod_from_an_image_without_python_runs_its_command(
    world: tuple[Exchange, Registry], tenant: Tenant
) -> None:
    """The image holds only a static busybox: the command runs in the image's WORKDIR with
    its ENV and USER, sees none of the supervisor's PYTHON*/LD_* or private CRUCIBLE_*
    variables, and the pod ends with the command's exit status."""
    reg = world[1]
    pod = crucible.Pod.create(
        "nopy-cmd",
        image=f"{reg.host}/test/nopython:v1",
        command='echo hi; env; echo "pwd=$(pwd) uid=$(id -u)"; exit 3',
        client=tenant.client,
    )
    try:
        info = pod.wait("failed", "stopped", timeout_s=180)
        assert info.state == "failed" and "status 3" in (info.reason or ""), info
        lines = _wait_logs(pod, "pwd=/srv uid=4321")
        assert "hi" in lines, lines
        assert "IMAGE_VAR=no-python" in lines and "PATH=/opt/tools:/usr/bin:/bin" in lines, lines
        assert "HOME=/pod" in lines, lines
        names = {x.split("=", 1)[0] for x in lines if "=" in x and not x.startswith("pwd=")}
        leaked = {n for n in names if n.startswith(("PYTHON", "LD_"))}
        assert not leaked, lines
        crucible_vars = {n for n in names if n.startswith("CRUCIBLE_")}
        assert crucible_vars <= {"CRUCIBLE_POD_ID", "CRUCIBLE_POD_NAME", "CRUCIBLE_POD_DISK"}
    finally:
        pod.delete()


@pytest.mark.skipif(BUSYBOX is None, reason="needs Debian's busybox-static (scripts/setup dev)")
def test_a_pod_from_an_image_without_python_runs_its_entrypoint_and_serves_sessions(
    world: tuple[Exchange, Registry], tenant: Tenant
) -> None:
    """ENTRYPOINT + CMD of an image with no Python; `pod exec` and `pod ssh` into it; stop
    ends it with the grace, start runs it again on its disk."""
    ex, reg = world
    pod = tenant.pod("nopy", f"{reg.host}/test/nopython:v1")
    try:
        _wait_logs(pod, "cmd-ran no-python /srv 4321")
        token = tenant.token
        code, out, err = run_exec(
            ex, token, pod.info().container_id, ["sh", "-c", 'echo "exec-$IMAGE_VAR"; exit 4']
        )
        assert code == 4 and out.decode().split() == ["exec-no-python"], err
        run = tenant.ssh("nopy", 'echo "ssh-$IMAGE_VAR $(pwd)"; echo kept > /pod/k; exit 6')
        assert run.returncode == 6 and "ssh-no-python /srv" in run.stdout, run.stderr

        pod.stop()
        stopped = pod.wait("stopped", "failed", timeout_s=120)
        assert stopped.state == "stopped", stopped
        pod.start()
        again = pod.wait("running", "failed", timeout_s=180)
        assert again.state == "running", again
        _wait_logs(pod, "cmd-ran no-python /srv 4321", count=2)
        run = tenant.ssh("nopy", "cat /pod/k")
        assert run.stdout.strip() == "kept", run.stderr
    finally:
        pod.delete()


@pytest.mark.skipif(BUSYBOX is None, reason="needs Debian's busybox-static (scripts/setup dev)")
def test_a_pod_from_an_image_without_python_nor_a_command_waits_until_stopped(
    world: tuple[Exchange, Registry], tenant: Tenant
) -> None:
    ex, reg = world
    pod = tenant.pod("idle", f"{reg.host}/test/idle:v1")
    try:
        code, out, err = run_exec(
            ex, tenant.token, pod.info().container_id, ["sh", "-c", 'echo "up-$IMAGE_VAR"']
        )
        assert code == 0 and out.decode().strip() == "up-idle", err
        assert pod.info().state == "running"
        pod.stop()
        stopped = pod.wait("stopped", "failed", timeout_s=120)
        assert stopped.state == "stopped", stopped
    finally:
        pod.delete()
