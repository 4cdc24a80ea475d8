"""The SSH server the agent brings into a sandbox whose root file system is an OCI image.

A container from the exchange's default image sees the host's ``/usr`` and runs
``python -m crucible.worker.sshd``. An OCI image sees none of the host, and may hold no Python,
a musl libc or no libc at all, so the agent brings its own server, independent of the image:

- :class:`SshBundle` copies, once per agent, the host's ``dropbear`` (Debian's
  ``dropbear-bin``), OpenSSH's ``sftp-server`` (``openssh-sftp-server``), ``libnss_wrapper``
  (``libnss-wrapper``), every shared library they need (``ldd``) and the host's dynamic loader
  into ``<agent_dir>/ssh-bundle/<hash>`` (:mod:`crucible.agent.host_bundle`, which also
  brings a pod's Python), which each such sandbox sees read-only at :data:`BUNDLE_PATH`.
  Its programs run through the bundled loader with ``--library-path``
  and ``--preload``, so no ``LD_LIBRARY_PATH`` or ``LD_PRELOAD`` is ever set: the image's own
  programs (the user's shell, an Alpine busybox) load with the image's own libc.
- Each sandbox has a state directory (its host key, made once with ``dropbearkey``; one
  directory per session with ``.ssh/authorized_keys`` holding the account's keys, and the
  ``passwd``/``group`` files that nss_wrapper gives dropbear), written by the agent and seen
  read-only at :data:`STATE_PATH`. The image's user may have no ``/etc/passwd`` entry (a
  numeric ``USER``): nss_wrapper names it for dropbear only, as the login name ssh sent,
  ``crucible`` and ``root``, all the container's uid. Nothing of the image is changed, and
  the image's libc never sees nss_wrapper.
- dropbear runs in inetd mode over the session with ``-e`` (the session gets the container's
  environment: the image's ENV) and a forced command that the image's shell sources
  (:data:`SESSION_SCRIPT`): it restores the image's ``PATH`` and the session's ``HOME`` (which
  dropbear overwrites), enters the image's ``WORKDIR`` (else ``$HOME``), then runs the
  client's command with the shell, the bundled ``sftp-server`` for SFTP (``scp`` and
  ``sftp``), or an interactive shell.

The login shell is the image's ``/bin/bash`` or ``/bin/sh`` (one that the image's
``/etc/shells`` allows, as dropbear requires). An image without a shell is refused with a
message saying so and what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from crucible.agent.host_bundle import build_bundle, ldd_closure
from crucible.agent.host_bundle import find_file as _find
from crucible.agent.oci.python import resolve_in_rootfs
from crucible.errors import InvalidRequestError, SandboxUnavailableError

__all__ = [
    "BUNDLE_PATH",
    "STATE_PATH",
    "SshBundle",
    "SshSandbox",
    "SshServer",
    "login_shell",
]

BUNDLE_PATH = "/crucible/ssh"
STATE_PATH = "/crucible/sshd"
_LOADER = f"{BUNDLE_PATH}/ld.so"
_LIBS = f"{BUNDLE_PATH}/lib"
_RUN = f"{_LOADER} --inhibit-cache --library-path {_LIBS}"

_DROPBEAR = ("/usr/sbin/dropbear", "/usr/bin/dropbear", "/sbin/dropbear")
_DROPBEARKEY = ("/usr/bin/dropbearkey", "/usr/sbin/dropbearkey")
_SFTP_SERVER = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/sftp-server",
)
_NSS_WRAPPER = (
    "/usr/lib/*/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
)
_UID_WRAPPER = (
    "/usr/lib/*/libuid_wrapper.so",
    "/usr/lib64/libuid_wrapper.so",
    "/usr/lib/libuid_wrapper.so",
)
_SHELLS = ("/bin/bash", "/usr/bin/bash", "/bin/sh", "/usr/bin/sh", "/bin/ash")

# Sourced by the image's login shell as dropbear's forced command (``-c``). POSIX sh only:
# dash, bash and busybox's ash run it. The SFTP subsystem arrives as dropbear's compiled-in
# path (Debian's /usr/lib/sftp-server), which the image does not have: the bundle's serves it.
SESSION_SCRIPT = f"""\
# Crucible: the start of an SSH session in an OCI image (crucible/agent/ssh_bundle.py).
PATH=$CRUCIBLE_SSH_PATH
HOME=$CRUCIBLE_SSH_HOME
export PATH HOME
cd "$CRUCIBLE_SSH_CWD" 2>/dev/null || cd "$HOME" 2>/dev/null || cd /
unset CRUCIBLE_SSH_PATH CRUCIBLE_SSH_HOME CRUCIBLE_SSH_CWD
crucible_ssh_cmd=$SSH_ORIGINAL_COMMAND
unset SSH_ORIGINAL_COMMAND
case $crucible_ssh_cmd in
  /usr/lib/sftp-server|/usr/lib/openssh/sftp-server|/usr/libexec/sftp-server|internal-sftp)
    exec {_RUN} --preload {_LIBS}/libnss_wrapper.so {BUNDLE_PATH}/sftp-server ;;
esac
unset NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP UID_WRAPPER
case $crucible_ssh_cmd in
  '') unset crucible_ssh_cmd; exec "$SHELL" ;;
esac
exec "$SHELL" -c "$crucible_ssh_cmd"
"""

NO_DROPBEAR = (
    "this host cannot serve SSH into OCI images: it lacks dropbear (apt-get install "
    "dropbear-bin on the host)"
)


class SshBundle:
    """The host programs an OCI sandbox's SSH server runs, copied once under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._built: tuple[Path | None, str | None] | None = None

    def ensure(self) -> tuple[Path | None, str | None]:
        """(the bundle's host directory, None) or (None, why this host has none: the message
        names the Debian package to install)."""
        with self._lock:
            if self._built is None:
                built = self._build()
                if built[0] is None:  # not kept: packages installed later are found
                    return built
                self._built = built
            return self._built

    def _build(self) -> tuple[Path | None, str | None]:
        dropbear = shutil.which("dropbear") or _find(_DROPBEAR)
        if dropbear is None or _keygen() is None:
            return None, NO_DROPBEAR
        nss = _find(_NSS_WRAPPER)
        if nss is None:
            return None, (
                "this host cannot serve SSH into OCI images: it lacks libnss_wrapper "
                "(apt-get install libnss-wrapper on the host)"
            )
        sftp = _find(_SFTP_SERVER)
        if sftp is None:
            return None, (
                "this host cannot serve SSH into OCI images: it lacks sftp-server, which scp "
                "and sftp need (apt-get install openssh-sftp-server on the host)"
            )
        programs = {"dropbear": dropbear, "sftp-server": sftp}
        libs: dict[str, str] = {"libnss_wrapper.so": nss}
        uid_wrapper = _find(_UID_WRAPPER)  # for images that run as root (see server())
        if uid_wrapper is not None:
            libs["libuid_wrapper.so"] = uid_wrapper
        loader = ldd_closure([dropbear, sftp, *libs.values()], libs)
        if loader is None:
            why = f"no dynamic loader found for {dropbear}"
            return None, f"this host cannot serve SSH into OCI images: {why}"
        files = {**programs, "ld.so": loader, **{f"lib/{n}": p for n, p in libs.items()}}
        dest = build_bundle(self.root, files, texts={"session": SESSION_SCRIPT}, dirs=["lib"])
        return dest, None


def _keygen() -> str | None:
    return shutil.which("dropbearkey") or _find(_DROPBEARKEY)


def _shells(rootfs: Path) -> set[str]:
    """The shells the image's ``/etc/shells`` lists (a regular file of the image only), or
    what glibc's getusershell() assumes without one."""
    path = rootfs / "etc" / "shells"
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise OSError
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return {"/bin/sh", "/bin/csh"}
    return {line.strip() for line in text.splitlines() if line.strip().startswith("/")}


def login_shell(rootfs: Path) -> str | None:
    """The image's login shell for SSH: bash, else sh, that exists in the image and that its
    ``/etc/shells`` allows (dropbear refuses another); None when it has none."""
    valid = _shells(rootfs)
    for shell in _SHELLS:
        if shell not in valid:
            continue
        inside = resolve_in_rootfs(rootfs, shell)
        if inside is not None and os.stat(rootfs / inside.lstrip("/")).st_mode & 0o111:
            return shell
    return None


@dataclass(frozen=True)
class SshServer:
    """One session's SSH server: the command the sandbox runs and its extra environment."""

    argv: list[str]
    env: dict[str, str]
    state: Path  # the session's host directory (removed by close())

    def close(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


@dataclass
class SshSandbox:
    """What one OCI sandbox needs to serve SSH sessions."""

    bundle: Path | None  # the bundle's host directory; None: ``problem`` says why
    problem: str | None
    state: Path  # host directory seen at STATE_PATH
    rootfs: Path
    ref: str  # the image's reference (for messages)
    workdir: str  # the image's WORKDIR ("" or "/" when it sets none)
    uid: int  # the sandbox's uid and gid inside
    gid: int
    host_uid: int | None  # the sandbox's own host uid (agent as root), which owns the state
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mounts(self) -> list[tuple[Path, str]]:
        """(host directory, path inside) to bind read-only into the sandbox."""
        out = [(self.state, STATE_PATH)]
        if self.bundle is not None:
            out.insert(0, (self.bundle, BUNDLE_PATH))
        return out

    def server(
        self, session_id: str, keys: list[str], login: str, home: str, path: str
    ) -> SshServer:
        """Prepare a session: its keys and user files; the dropbear command line. ``home``:
        the session's $HOME inside; ``path``: the image's PATH. Raises an :class:`Error`
        saying what to do when this sandbox cannot serve SSH."""
        if self.bundle is None:
            raise SandboxUnavailableError(self.problem or NO_DROPBEAR)
        shell = login_shell(self.rootfs)
        if shell is None:
            raise InvalidRequestError(
                f"the image {self.ref} has no shell (/bin/sh or /bin/bash allowed by its "
                "/etc/shells), and an SSH session runs your login and commands with it: use "
                "an image with a shell (even busybox's), or run one of its programs with "
                "`crucible pod exec POD -- PROGRAM`"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", session_id):
            raise InvalidRequestError(f"invalid session id {session_id[:40]!r}")
        preload = [f"{_LIBS}/libnss_wrapper.so"]
        if self.uid == 0:
            # dropbear running as root changes to the user's groups (setgroups), which a
            # sandbox's user namespace forbids even to its root: uid_wrapper makes that a
            # no-op inside dropbear (the session's uid is root's anyway).
            if not (self.bundle / "lib" / "libuid_wrapper.so").exists():
                raise SandboxUnavailableError(
                    f"the image {self.ref} runs as root, and this host's SSH server needs "
                    "uid_wrapper for that (apt-get install libuid-wrapper on the host)"
                )
            preload.append(f"{_LIBS}/libuid_wrapper.so")
        hostkey = self._hostkey()
        state = self.state / session_id
        shutil.rmtree(state, ignore_errors=True)
        (state / ".ssh").mkdir(parents=True, mode=0o700)
        inside = f"{STATE_PATH}/{session_id}"
        names = dict.fromkeys([login, "crucible", "root"])
        files = {
            ".ssh/authorized_keys": "".join(k.strip() + "\n" for k in keys),
            "passwd": "".join(
                f"{n}:x:{self.uid}:{self.gid}:crucible:{inside}:{shell}\n" for n in names
            ),
            "group": f"crucible:x:{self.gid}:\n",
        }
        for name, text in files.items():
            (state / name).write_text(text, encoding="utf-8")
            (state / name).chmod(0o600)
        state.chmod(0o700)
        self._own(state, state / ".ssh", *(state / n for n in files))
        argv = [
            _LOADER,
            "--inhibit-cache",
            "--library-path",
            _LIBS,
            "--preload",
            ":".join(preload),
            f"{BUNDLE_PATH}/dropbear",
            # -i: inetd mode (the session is stdin/stdout); -s: keys only; -m: no motd;
            # -e: the container's environment reaches the session; -c: the session script.
            *("-i", "-s", "-m", "-e", "-r", f"{STATE_PATH}/{hostkey.name}"),
            *("-c", f". {BUNDLE_PATH}/session"),
        ]
        env = {
            "NSS_WRAPPER_PASSWD": f"{inside}/passwd",
            "NSS_WRAPPER_GROUP": f"{inside}/group",
            "CRUCIBLE_SSH_PATH": path,
            "CRUCIBLE_SSH_HOME": home,
            # An image that sets no WORKDIR reads as "/" (as the pod's command takes it):
            # the session starts in the pod's disk then, as exec sessions do.
            "CRUCIBLE_SSH_CWD": self.workdir if self.workdir not in ("", "/") else home,
        }
        if self.uid == 0:
            env["UID_WRAPPER"] = "1"
        return SshServer(argv=argv, env=env, state=state)

    def _hostkey(self) -> Path:
        """The sandbox's host key, made on its first session."""
        key = self.state / "host_key_ed25519"
        with self._lock:
            if not key.exists():
                keygen = _keygen()
                if keygen is None:
                    raise SandboxUnavailableError(NO_DROPBEAR)
                tmp = self.state / f".host_key.{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                subprocess.run(
                    [keygen, "-t", "ed25519", "-f", str(tmp)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=True,
                    timeout=30,
                )
                tmp.chmod(0o600)
                self._own(tmp)
                tmp.rename(key)
        return key

    def _own(self, *paths: Path) -> None:
        """Give ``paths`` to the sandbox's host uid: dropbear accepts keys only in files its
        user owns."""
        if self.host_uid is None:
            return
        for p in paths:
            os.chown(p, self.host_uid, self.host_uid)
