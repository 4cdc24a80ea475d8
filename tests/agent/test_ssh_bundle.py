"""The SSH server the agent brings into OCI sandboxes (agent/ssh_bundle.py): the bundle of the
host's dropbear runs through its own loader, the login shell follows the image's
/etc/shells, each session's files are written for dropbear and removed after it, and what a
host or an image lacks is a clear error. (The end-to-end sessions:
tests/sandbox/test_oci_ssh.py.)"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crucible.agent import ssh_bundle
from crucible.agent.ssh_bundle import BUNDLE_PATH, STATE_PATH, SshBundle, SshSandbox, login_shell
from crucible.errors import InvalidRequestError, SandboxUnavailableError

HAS_DROPBEAR = shutil.which("dropbear") is not None or os.path.exists("/usr/sbin/dropbear")
HAS_WRAPPERS = bool(glob.glob("/usr/lib/*/libnss_wrapper.so")) and bool(
    glob.glob("/usr/lib/*/sftp-server") + glob.glob("/usr/lib/openssh/sftp-server")
)
needs_dropbear = pytest.mark.skipif(
    not (HAS_DROPBEAR and HAS_WRAPPERS),
    reason="needs dropbear-bin, libnss-wrapper, openssh-sftp-server (scripts/setup dev)",
)


def _rootfs(tmp: Path, shells: str | None, programs: tuple[str, ...]) -> Path:
    root = tmp / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    for p in programs:
        (root / p.lstrip("/")).write_bytes(b"\x7fELF")
        (root / p.lstrip("/")).chmod(0o755)
    if shells is not None:
        (root / "etc" / "shells").write_text(shells)
    return root


def test_login_shell_follows_the_images_etc_shells(tmp_path: Path) -> None:
    # bash listed and present: bash.
    root = _rootfs(tmp_path / "a", "/bin/sh\n/bin/bash\n", ("/bin/sh", "/bin/bash"))
    assert login_shell(root) == "/bin/bash"
    # bash present but not listed (dropbear would refuse it): sh.
    root = _rootfs(tmp_path / "b", "# comment\n/bin/sh\n", ("/bin/sh", "/bin/bash"))
    assert login_shell(root) == "/bin/sh"
    # No /etc/shells: glibc allows /bin/sh only.
    root = _rootfs(tmp_path / "c", None, ("/bin/sh", "/bin/bash"))
    assert login_shell(root) == "/bin/sh"
    # No shell at all.
    root = _rootfs(tmp_path / "d", None, ())
    assert login_shell(root) is None


def test_an_etc_shells_link_out_of_the_image_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "host-shells"
    outside.write_text("/bin/bash\n")
    root = _rootfs(tmp_path / "a", None, ("/bin/sh", "/bin/bash"))
    (root / "etc" / "shells").symlink_to(outside)
    assert login_shell(root) == "/bin/sh"  # the defaults, not the host's file


def test_a_host_without_dropbear_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_bundle.shutil, "which", lambda _name: None)
    monkeypatch.setattr(ssh_bundle, "_DROPBEAR", (str(tmp_path / "none"),))
    bundle, problem = SshBundle(tmp_path / "bundle").ensure()
    assert bundle is None and problem is not None
    assert "apt-get install dropbear-bin" in problem
    sandbox = SshSandbox(
        bundle=None,
        problem=problem,
        state=tmp_path,
        rootfs=tmp_path,
        ref="img",
        workdir="",
        uid=1000,
        gid=1000,
        host_uid=None,
    )
    with pytest.raises(SandboxUnavailableError, match="dropbear-bin"):
        sandbox.server("s1", ["ssh-ed25519 AAAA k"], "crucible", "/pod", "/usr/bin:/bin")


@needs_dropbear
def test_the_bundle_runs_dropbear_through_its_own_loader(tmp_path: Path) -> None:
    bundle, problem = SshBundle(tmp_path / "bundle").ensure()
    assert problem is None and bundle is not None
    assert (bundle / "ld.so").is_file() and (bundle / "lib" / "libc.so.6").is_file()
    assert (bundle / "lib" / "libnss_wrapper.so").is_file()
    assert (bundle / "sftp-server").is_file() and (bundle / "session").is_file()
    run = subprocess.run(
        [
            str(bundle / "ld.so"),
            "--library-path",
            str(bundle / "lib"),
            str(bundle / "dropbear"),
            "-V",
        ],
        capture_output=True,
        text=True,
        env={},
        check=False,
    )
    assert "Dropbear" in run.stdout + run.stderr
    # Built once: a second agent (or start) reuses it.
    assert SshBundle(tmp_path / "bundle").ensure() == (bundle, None)


@needs_dropbear
def test_a_session_gets_its_own_files_and_no_loader_variables(tmp_path: Path) -> None:
    bundle, _ = SshBundle(tmp_path / "bundle").ensure()
    root = _rootfs(tmp_path, "/bin/sh\n/bin/bash\n", ("/bin/sh", "/bin/bash"))
    state = tmp_path / "state"
    state.mkdir()
    sandbox = SshSandbox(
        bundle=bundle,
        problem=None,
        state=state,
        rootfs=root,
        ref="reg/img:v1",
        workdir="/srv",
        uid=4321,
        gid=4321,
        host_uid=None,
    )
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM41E+AupwVlrn50hORcFmAoByq3DKIwXHNbpb/gDl+y a"]
    server = sandbox.server("sess-1", keys, "alice", "/pod", "/opt/bin:/usr/bin:/bin")
    home = state / "sess-1"
    assert (home / ".ssh" / "authorized_keys").read_text() == keys[0] + "\n"
    assert oct((home / ".ssh" / "authorized_keys").stat().st_mode & 0o777) == "0o600"
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    passwd = (home / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["alice", "crucible", "root"]
    assert all(f":4321:4321:crucible:{STATE_PATH}/sess-1:/bin/bash" in x for x in passwd)
    assert (state / "host_key_ed25519").is_file()
    assert server.argv[0] == f"{BUNDLE_PATH}/ld.so" and "--preload" in server.argv
    assert not any(k.startswith("LD_") for k in server.env)
    assert server.env["CRUCIBLE_SSH_PATH"] == "/opt/bin:/usr/bin:/bin"
    assert server.env["CRUCIBLE_SSH_CWD"] == "/srv"
    assert "UID_WRAPPER" not in server.env  # only for an image that runs as root
    server.close()
    assert not home.exists()
    with pytest.raises(InvalidRequestError, match="session id"):
        sandbox.server("../x", keys, "alice", "/pod", "/bin")


@needs_dropbear
def test_an_image_without_a_shell_is_refused_with_the_way_out(tmp_path: Path) -> None:
    bundle, _ = SshBundle(tmp_path / "bundle").ensure()
    root = _rootfs(tmp_path, None, ())
    sandbox = SshSandbox(
        bundle=bundle,
        problem=None,
        state=tmp_path,
        rootfs=root,
        ref="reg/distroless:v1",
        workdir="",
        uid=1000,
        gid=1000,
        host_uid=None,
    )
    with pytest.raises(InvalidRequestError) as err:
        sandbox.server("s1", ["ssh-ed25519 AAAA k"], "crucible", "/pod", "/bin")
    assert "reg/distroless:v1 has no shell" in err.value.message
    assert "crucible pod exec" in err.value.message
