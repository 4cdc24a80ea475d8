"""The bubblewrap sandbox: the ``bwrap`` command line, the relay to the control plane, and a
handle on one sandboxed zygote.

A sandbox holds one zygote (:mod:`crucible.worker.zygote`) and the containers it forks, all
of one account, image, network setting and GPU set. What a process inside sees:

=========================  ==========================================================
``/usr``, ``/etc`` (parts)  the host's system files, read-only
Python and Crucible         the agent's interpreter, its packages and Crucible, read-only
the image                   ``<agent_dir>/images/<key>`` read-only, at its host path;
                            ``add_local_dir`` files read-only at their paths
``/crucible/code``          this sandbox's code bundles, read-only (the agent unpacks them)
``/crucible/run``           the relay socket to the control plane, read-only
``/crucible/work``, ``/tmp`` private tmpfs, size-limited (``CRUCIBLE_SANDBOX_DISK_MIB``);
                            a container's work directory and $HOME is ``/crucible/work/<id>``
``/proc``                   a fresh procfs of the sandbox's own PID namespace
``/dev``                    null, zero, random, urandom, tty, shm, and the container's GPUs
=========================  ==========================================================

Nothing else of the host's file system exists inside: not the agent's directory, its token,
the host's home directories or other sandboxes. Namespaces: user (the sandbox runs as uid and
gid 1000 inside), PID, IPC, UTS, cgroup, and network unless the function asked for network.
All capabilities are dropped and :mod:`crucible.agent.seccomp` filters syscalls.

The worker still reaches the control plane with the network off: it talks HTTP over the
Unix socket ``/crucible/run/server.sock``, which the agent relays byte for byte to the
server's address and nowhere else (:class:`Relay`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible.agent import seccomp
from crucible.agent.cgroups import SandboxCgroup
from crucible.agent.images import host_python_paths
from crucible.errors import SandboxUnavailableError

__all__ = [
    "SOCKET_PATH",
    "WORK_ROOT",
    "Relay",
    "SandboxConfig",
    "ZygoteProcess",
    "bwrap_argv",
    "check_bwrap",
    "python_mounts",
]

log = logging.getLogger(__name__)

SANDBOX_UID = 1000
SOCKET_PATH = "/crucible/run/server.sock"
WORK_ROOT = "/crucible/work"
# Host files a Python program needs (TLS roots, name service, time zone, linker cache).
_ETC = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
)
_ETC_NETWORK = ("/etc/resolv.conf", "/etc/hosts", "/etc/gai.conf", "/etc/services")
_GPU_SHARED_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def check_bwrap(bwrap: str = "bwrap") -> str:
    """The bwrap binary, after checking it can create a sandbox here. Raises
    :class:`SandboxUnavailableError` saying what to install or enable."""
    path = shutil.which(bwrap)
    if path is None:
        raise SandboxUnavailableError(
            f"{bwrap!r} not found: install bubblewrap (apt-get install bubblewrap) or run the "
            "agent with --runtime process (trusted code only)"
        )
    if not seccomp.supported_arch(platform.machine()):
        raise SandboxUnavailableError(
            f"the sandbox's seccomp filter does not cover {platform.machine()}"
        )
    probe = [path, "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"]
    result = subprocess.run(probe, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SandboxUnavailableError(
            "bubblewrap cannot create user namespaces on this host "
            f"({result.stderr.strip() or result.returncode}); enable unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    return path


@dataclass
class SandboxConfig:
    """What one sandbox gets. Paths are host paths."""

    name: str  # unique per sandbox on this host (directory and cgroup name)
    dir: Path  # <agent_dir>/sandboxes/<name>: code/, run/, zygote.log
    python: str  # interpreter inside (the image's, or the agent's own)
    preload: list[str]
    image_mounts: list[tuple[Path, str]] = field(default_factory=list)  # (host, inside)
    image_root: Path | None = None
    network: bool = False
    gpu_indices: list[int] = field(default_factory=list)
    disk_bytes: int = 1 << 30
    env: dict[str, str] = field(default_factory=dict)
    # Holds the relay socket. Unix socket paths are limited to 107 bytes, so it lives in a
    # short private temporary directory rather than under the agent's directory.
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="crucible-relay-")))

    @property
    def code_dir(self) -> Path:
        return self.dir / "code"


def python_mounts(python: str) -> list[str]:
    """Read-only directories the interpreter and Crucible need, deepest duplicates dropped."""
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(os.path.realpath(sys.executable)).parent.parent),
        str(Path(os.path.realpath(python)).parent.parent),
        *host_python_paths(),
    }
    system = ("/usr", "/bin", "/lib", "/lib64", "/sbin")
    out: list[str] = []
    for p in sorted(candidates, key=len):
        if not p or not os.path.isdir(p) or p == "/" or p in system:
            continue
        if any(p == q or p.startswith(q.rstrip("/") + "/") for q in out + list(system)):
            continue
        out.append(p)
    return out


def bwrap_argv(bwrap: str, cfg: SandboxConfig, ctrl_fd: int, seccomp_fd: int) -> list[str]:
    """The full command line for a sandboxed zygote."""
    a = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    a += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    a += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "crucible"]
    if not cfg.network:
        a.append("--unshare-net")
    # File systems first: binds below may land inside them (an image under the host's /tmp).
    a += ["--proc", "/proc", "--dev", "/dev"]
    a += ["--size", str(cfg.disk_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    a += ["--size", str(cfg.disk_bytes), "--perms", "1777", "--tmpfs", WORK_ROOT]
    for d in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(d):
            a += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            a += ["--ro-bind", d, d]
    for p in _ETC + (_ETC_NETWORK if cfg.network else ()):
        if os.path.exists(p):
            a += ["--ro-bind", p, p]
    for p in python_mounts(cfg.python):
        a += ["--ro-bind", p, p]
    if cfg.image_root is not None:
        a += ["--ro-bind", str(cfg.image_root), str(cfg.image_root)]
    for host, inside in cfg.image_mounts:
        a += ["--ro-bind", str(host), inside]
    for node in _gpu_nodes(cfg.gpu_indices):
        a += ["--dev-bind", node, node]
    a += ["--ro-bind", str(cfg.code_dir), "/crucible/code"]
    a += ["--ro-bind", str(cfg.run_dir), "/crucible/run"]
    a += ["--remount-ro", "/", "--seccomp", str(seccomp_fd), "--clearenv", "--chdir", WORK_ROOT]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": WORK_ROOT,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "CRUCIBLE_PRELOAD": ",".join(cfg.preload),
        **cfg.env,
    }
    for k, v in env.items():
        a += ["--setenv", k, v]
    # -P: the working directory (writable) is not put on sys.path.
    a += ["--", cfg.python, "-P", "-m", "crucible.worker.zygote", "--ctrl-fd", str(ctrl_fd)]
    return a


def _gpu_nodes(indices: list[int]) -> list[str]:
    nodes = [f"/dev/nvidia{i}" for i in indices]
    if indices:
        nodes += list(_GPU_SHARED_NODES)
    return [n for n in nodes if os.path.exists(n)]


class Relay:
    """Accepts connections on a Unix socket and pipes each, byte for byte, to one TCP address
    (the control plane). It is the sandbox's only way out when its network is off."""

    def __init__(self, path: Path, server_url: str) -> None:
        parsed = urllib.parse.urlsplit(server_url)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        if parsed.scheme == "https" and parsed.port is None:
            self.target = (self.target[0], 443)
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)  # the sandbox's user connects; the directory is ours alone
        self.sock.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, name="crucible-relay", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept(self) -> None:
        while not self._closed:
            try:
                inner, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(inner,), daemon=True).start()

    def _pipe(self, inner: socket.socket) -> None:
        try:
            outer = socket.create_connection(self.target, timeout=10)
        except OSError:
            inner.close()
            return
        outer.settimeout(None)
        outer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(1 << 16)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(outer, inner), daemon=True)
        back.start()
        pump(inner, outer)
        back.join()
        inner.close()
        outer.close()


class ZygoteProcess:
    """One sandboxed zygote: the bwrap process, its control socket and a reader thread.

    ``on_message`` receives every message the zygote sends (see :mod:`crucible.worker.zygote`)
    and finally ``{"op": "gone", "status": N}`` once the sandbox has ended. Construct it from
    a thread that outlives the sandbox: bwrap's ``--die-with-parent`` is tied to the thread
    that spawned it.
    """

    def __init__(
        self,
        bwrap: str,
        cfg: SandboxConfig,
        on_message: Callable[[dict[str, Any]], None],
        *,
        cgroup: SandboxCgroup | None,
        limits: dict[str, int],
    ) -> None:
        self.cfg = cfg
        self.cgroup = cgroup
        self.on_message = on_message
        self.ready = threading.Event()
        self.done = threading.Event()  # set once the sandbox ended and was cleaned up
        self.info: dict[str, Any] = {}
        self._send_lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctrl = ours
        with tempfile.TemporaryFile() as prog:
            prog.write(seccomp.filter_program())
            prog.flush()
            prog.seek(0)
            seccomp_fd = os.dup(prog.fileno())
        procs_fds = cgroup.procs_fds() if cgroup is not None else []
        try:
            argv = bwrap_argv(bwrap, cfg, theirs.fileno(), seccomp_fd)
            with open(cfg.dir / "zygote.log", "ab") as logf:
                self.proc = subprocess.Popen(
                    argv,
                    env={"PATH": "/usr/bin:/bin"},  # bwrap's own; the sandbox gets --setenv
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    pass_fds=(theirs.fileno(), seccomp_fd),
                    close_fds=True,
                    start_new_session=True,
                    preexec_fn=_Preexec(procs_fds, limits),
                )
        finally:
            theirs.close()
            os.close(seccomp_fd)
            for fd in procs_fds:
                os.close(fd)
        threading.Thread(target=self._read, name=f"zygote-{cfg.name[:12]}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        """Send one message (with ``fds``); False when the zygote is gone."""
        data = json.dumps(msg).encode() + b"\n"
        try:
            with self._send_lock:
                if fds:
                    socket.send_fds(self.ctrl, [data], fds)
                else:
                    self.ctrl.sendall(data)
        except OSError:
            return False
        return True

    def terminate(self) -> None:
        """End the sandbox: closing the control socket makes the zygote kill its children and
        exit; SIGKILL on bwrap follows if it lingers."""
        with contextlib.suppress(OSError):
            self.ctrl.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                try:
                    data = self.ctrl.recv(1 << 16)
                except OSError:
                    break
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("op") == "ready":
                        self.info = msg
                        self.ready.set()
                    self.on_message(msg)
        finally:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            status = self.proc.wait()
            self.ctrl.close()
            shutil.rmtree(self.cfg.run_dir, ignore_errors=True)
            if self.cgroup is not None:
                self.cgroup.remove()
            tail = ""
            with contextlib.suppress(OSError), open(self.cfg.dir / "zygote.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4000))
                tail = f.read().decode("utf-8", "replace")
            try:
                self.on_message({"op": "gone", "status": status, "log": tail})
            finally:
                self.done.set()


class _Preexec:
    """Runs in the child between fork and exec: join the sandbox's cgroups, set rlimits that
    bound the whole sandbox. No imports, no locks."""

    def __init__(self, procs_fds: list[int], limits: dict[str, int]) -> None:
        import resource

        self.procs_fds = procs_fds
        self.rlimits = [
            (getattr(resource, name), value) for name, value in limits.items() if value > 0
        ]
        self.setrlimit = resource.setrlimit

    def __call__(self) -> None:
        for fd in self.procs_fds:
            os.write(fd, b"0")
        for which, value in self.rlimits:
            self.setrlimit(which, (value, value))
