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

With an OCI image (``Image.from_registry``) the image's root file system is ``/`` instead of
the host's system directories: none of the host's ``/usr`` or ``/etc`` is seen, the worker's
code and dependencies are bound read-only under ``/crucible/lib`` and appended to the image
Python's path, and the sandbox runs as the image's ``USER``. The agent's own SSH server for
such a sandbox (the host's dropbear, its libraries and loader:
:mod:`crucible.agent.ssh_bundle`) is bound read-only at ``/crucible/ssh``, its keys and user
files at ``/crucible/sshd``.

Nothing else of the host's file system exists inside: not the agent's directory, its token,
the host's home directories or other sandboxes. Namespaces: user (the sandbox runs as uid and
gid 1000 inside), PID, IPC, UTS, cgroup and network (the host's network only for the host
owner's own code that asked for ``network=True``; filtered egress through
:mod:`crucible.agent.egress` for every other ask). All capabilities are dropped and
:mod:`crucible.agent.seccomp` filters syscalls.

Per-sandbox host uid: an agent running as root starts each bwrap as its own host uid
(:mod:`crucible.agent.uids`), so uid 1000 inside is a different host uid in every sandbox and
``RLIMIT_NPROC``, signals and file ownership are per sandbox. bwrap then runs unprivileged, so
it could not reach host paths behind the agent's private directories: between fork and exec
the agent enters a private mount namespace, bind-mounts each host path the sandbox gets onto a
staging directory owned by the sandbox's uid, and only then drops to that uid
(:class:`_Preexec`). The host's mount table never changes.

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
from crucible.agent.egress import EgressLink, EgressPlan, wait_child_pid
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
# The sandbox's own process command line when it runs the zygote.
ZYGOTE_MODULE = "crucible.worker.zygote"
SOCKET_PATH = "/crucible/run/server.sock"
# The exchange's CA bundle inside a sandbox, when the agent trusts one of its own
# (SSL_CERT_FILE): a container's worker trusts the same (docs/operators.md, TLS).
CA_BUNDLE_PATH = "/crucible/run/ca.pem"
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
# The control nodes CUDA needs beside the GPUs' own /dev/nvidiaN (those present are bound).
GPU_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin")


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
    network: bool = False  # the host's own network (only the host owner's code)
    # Filtered egress through user-mode networking (agent/egress.py); None: none.
    egress: EgressPlan | None = None
    # Called with the sandbox's first process before anything runs in it: puts its network
    # namespace on a cluster's private network (agent/clusternet.py). None: no cluster.
    join_network: Callable[[int], object] | None = None
    gpu_indices: list[int] = field(default_factory=list)
    disk_bytes: int = 1 << 30
    env: dict[str, str] = field(default_factory=dict)
    host_uid: int | None = None  # the sandbox's own host uid (agent as root), else None
    gpu_dev_root: str = "/dev"  # where the GPU device nodes are on the host
    # Volumes bound read-write: (host directory, mount path inside); the worker fills them.
    volume_mounts: list[tuple[Path, str]] = field(default_factory=list)
    # Holds the relay socket. Unix socket paths are limited to 107 bytes, so it lives in a
    # short private temporary directory rather than under the agent's directory. With a host
    # uid it (and its "-stage" sibling) must be reachable by that uid: keep it under /tmp.
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="crucible-relay-")))
    # An OCI image's root file system: bound read-only as /, instead of the host's system
    # directories; lib_mounts (the worker and its dependencies) are appended to sys.path.
    # The CA bundle the agent trusts for the exchange (its SSL_CERT_FILE), copied into the
    # run directory as ca.pem, which the sandbox sees at CA_BUNDLE_PATH; None: the image's own.
    ca_bundle: Path | None = None
    rootfs: Path | None = None
    lib_mounts: list[tuple[Path, str]] = field(default_factory=list)
    # With an OCI rootfs: the agent's SSH server and its state (agent/ssh_bundle.py), bound
    # read-only: (host directory, path inside).
    ssh_mounts: list[tuple[Path, str]] = field(default_factory=list)
    # With an OCI rootfs: the agent's own interpreter when the zygote runs with it (a pod;
    # agent/python_bundle.py): its folders, bound read-only in this order, and the loader
    # command line that starts ``python``.
    python_bundle_mounts: list[tuple[Path, str]] = field(default_factory=list)
    python_prefix: list[str] = field(default_factory=list)
    uid: int = SANDBOX_UID
    gid: int = SANDBOX_UID

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


def host_binds(cfg: SandboxConfig) -> list[tuple[str, str, str]]:
    """The host paths a sandbox gets beyond the system's own, as (host path, path inside,
    bwrap option): the interpreter's directories, the image, the code, the GPU nodes and the
    volumes' mount directories (the only writable ones). With an OCI rootfs, it comes first
    (bound at ``/``) and the worker's libraries replace the interpreter's directories."""
    if cfg.rootfs is not None:
        out = [(str(cfg.rootfs), "/", "--ro-bind")]
        out += [(str(host), inside, "--ro-bind") for host, inside in cfg.lib_mounts]
        out += [(str(host), inside, "--ro-bind") for host, inside in cfg.ssh_mounts]
        out += [(str(host), inside, "--ro-bind") for host, inside in cfg.python_bundle_mounts]
        out += [(host, inside, "--dev-bind") for host, inside in gpu_nodes(cfg)]
        out.append((str(cfg.code_dir), "/crucible/code", "--ro-bind"))
        out += [(str(host), inside, "--bind") for host, inside in cfg.volume_mounts]
        return out
    out = [(p, p, "--ro-bind") for p in python_mounts(cfg.python)]
    if cfg.image_root is not None:
        out.append((str(cfg.image_root), str(cfg.image_root), "--ro-bind"))
    out += [(str(host), inside, "--ro-bind") for host, inside in cfg.image_mounts]
    out += [(host, inside, "--dev-bind") for host, inside in gpu_nodes(cfg)]
    out.append((str(cfg.code_dir), "/crucible/code", "--ro-bind"))
    out += [(str(host), inside, "--bind") for host, inside in cfg.volume_mounts]
    return out


def bwrap_argv(
    bwrap: str,
    cfg: SandboxConfig,
    ctrl_fd: int | None,
    seccomp_fd: int,
    *,
    staged: list[str] | None = None,
    command: list[str] | None = None,
    sync_fds: tuple[int, int] | None = None,
) -> list[str]:
    """The full command line for a sandboxed zygote (or ``command``). ``staged``: where each
    of :func:`host_binds` is reachable for an unprivileged bwrap (by default, its host path)."""
    a = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    a += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    a += ["--uid", str(cfg.uid), "--gid", str(cfg.gid), "--hostname", "crucible"]
    # A network namespace of its own, except for the host owner's code that asked for the
    # host's network. Filtered egress happens in that namespace: bwrap tells the agent its
    # first process (--info-fd) and waits (--block-fd) until the filter and slirp4netns are
    # in place (agent/egress.py).
    if not cfg.network:
        a.append("--unshare-net")
    if sync_fds is not None:
        a += ["--info-fd", str(sync_fds[0]), "--block-fd", str(sync_fds[1])]
    binds = host_binds(cfg)
    sources = staged if staged is not None else [host for host, _, _ in binds]
    pairs = list(zip(binds, sources, strict=True))
    if cfg.rootfs is not None:  # the image's root first: everything else lands inside it
        (_, inside, option), source = pairs.pop(0)
        a += [option, source, inside]
    # File systems first: binds below may land inside them (an image under the host's /tmp).
    a += ["--proc", "/proc", "--dev", "/dev"]
    a += ["--size", str(cfg.disk_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    a += ["--size", str(cfg.disk_bytes), "--perms", "1777", "--tmpfs", WORK_ROOT]
    if cfg.rootfs is None:
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        for p in _ETC + (_ETC_NETWORK if cfg.network else ()):
            if os.path.exists(p):
                a += ["--ro-bind", p, p]
    else:  # mount points for the worker's libraries (the rootfs is read-only)
        a += ["--perms", "0755", "--tmpfs", "/crucible/lib"]
    if cfg.egress is not None:  # written by spawn_sandbox into the run directory
        a += ["--ro-bind", str(cfg.run_dir / "hosts"), "/etc/hosts"]
        a += ["--ro-bind", str(cfg.run_dir / "resolv.conf"), "/etc/resolv.conf"]
    for (_, inside, option), source in pairs:
        a += [option, source, inside]
    a += ["--ro-bind", str(cfg.run_dir), "/crucible/run"]
    a += ["--remount-ro", "/", "--seccomp", str(seccomp_fd), "--clearenv", "--chdir", WORK_ROOT]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        # The image's own packages first, then Crucible's worker and its dependencies.
        **({"CRUCIBLE_LIB_PATH": ":".join(p for _, p in cfg.lib_mounts)} if cfg.rootfs else {}),
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
    if command is None and cfg.rootfs is not None:
        boot = [cfg.python, "-P", "-c", _OCI_BOOT, "--ctrl-fd", str(ctrl_fd)]
        command = [*cfg.python_prefix, *boot]
    elif command is None:
        command = [cfg.python, "-P", "-m", ZYGOTE_MODULE, "--ctrl-fd", str(ctrl_fd)]
    a += ["--", *command]
    return a


# The zygote's start in an OCI image: the worker's libraries go after the image's own
# site-packages (PYTHONPATH would put them first and shadow the image's packages).
_OCI_BOOT = (
    "import os, runpy, sys; "
    "sys.path.extend(p for p in os.environ.pop('CRUCIBLE_LIB_PATH', '').split(':') if p); "
    f"runpy.run_module({ZYGOTE_MODULE!r}, run_name='__main__', alter_sys=True)"
)


def gpu_nodes(cfg: SandboxConfig) -> list[tuple[str, str]]:
    """(host node, /dev path inside) for the sandbox's GPUs and, when it has any, the control
    nodes CUDA needs; only nodes that exist. Nothing else of the host's /dev is visible."""
    if not cfg.gpu_indices:
        return []
    names = [f"nvidia{i}" for i in cfg.gpu_indices] + list(GPU_SHARED_NODES)
    root = cfg.gpu_dev_root.rstrip("/") or "/"
    return [
        (os.path.join(root, n), f"/dev/{n}") for n in names if os.path.exists(os.path.join(root, n))
    ]


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
        filter_fd = seccomp_program_fd()
        try:
            with open(cfg.dir / "zygote.log", "ab") as logf:
                self.proc, self.egress = spawn_sandbox(
                    bwrap,
                    cfg,
                    theirs.fileno(),
                    filter_fd,
                    cgroup=cgroup,
                    limits=limits,
                    stdout=logf,
                )
        finally:
            theirs.close()
            os.close(filter_fd)
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
            if self.egress is not None:
                self.egress.close()
            self.ctrl.close()
            shutil.rmtree(self.cfg.run_dir, ignore_errors=True)
            remove_stage(self.cfg)
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


def seccomp_program_fd() -> int:
    """A file descriptor on the sandbox's seccomp program (the caller closes it)."""
    with tempfile.TemporaryFile() as prog:
        prog.write(seccomp.filter_program())
        prog.flush()
        prog.seek(0)
        return os.dup(prog.fileno())


def agent_ca_bundle() -> Path | None:
    """The CA bundle the agent trusts for the exchange (``SSL_CERT_FILE``, as Python and
    httpx read it), when it names a file: its containers are given the same."""
    path = os.environ.get("SSL_CERT_FILE")
    return Path(path) if path and os.path.isfile(path) else None


def spawn_sandbox(
    bwrap: str,
    cfg: SandboxConfig,
    ctrl_fd: int | None,
    filter_fd: int,
    *,
    cgroup: SandboxCgroup | None,
    limits: dict[str, int],
    stdout: Any,
    command: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], EgressLink | None]:
    """Start bwrap for ``cfg``: in the sandbox's cgroups, under ``limits`` (rlimit names →
    values) and, with ``cfg.host_uid``, as that host uid with the host paths it gets staged
    (see the module docstring). ``ctrl_fd`` and ``filter_fd`` are passed to it. With
    ``cfg.egress``, the sandbox's network is filtered and connected before anything runs in
    it; the returned link is closed by the caller when the sandbox ends. With
    ``cfg.join_network``, the sandbox joins its cluster's network before anything runs in it.
    Raises :class:`~crucible.agent.egress.EgressError` or
    :class:`~crucible.agent.groupnet.GroupNetError` (the sandbox killed) when that fails."""
    if cfg.egress is not None:
        for name, text in (
            ("hosts", cfg.egress.hosts_file()),
            ("resolv.conf", cfg.egress.resolv_conf()),
        ):
            with open(cfg.run_dir / name, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(cfg.run_dir / name, 0o644)
    if cfg.ca_bundle is not None:
        shutil.copyfile(cfg.ca_bundle, cfg.run_dir / "ca.pem")
        os.chmod(cfg.run_dir / "ca.pem", 0o644)
    staged: list[str] | None = None
    mounts: list[tuple[str, str]] = []
    if cfg.host_uid is not None:
        stage = cfg.run_dir.parent / (cfg.run_dir.name + "-stage")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(mode=0o700)
        os.chown(stage, cfg.host_uid, cfg.host_uid)
        os.chown(cfg.run_dir, cfg.host_uid, cfg.host_uid)
        staged = []
        for i, (host, _, _) in enumerate(host_binds(cfg)):
            point = stage / str(i)
            if os.path.isdir(host):
                point.mkdir()
            else:
                point.touch()
            staged.append(str(point))
            mounts.append((host, str(point)))
    sync: tuple[int, int, int, int] | None = None  # info (r, w), block (r, w)
    if cfg.egress is not None or cfg.join_network is not None:
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        sync = (info_r, info_w, block_r, block_w)
    argv = bwrap_argv(
        bwrap,
        cfg,
        ctrl_fd,
        filter_fd,
        staged=staged,
        command=command,
        sync_fds=(sync[1], sync[2]) if sync is not None else None,
    )
    procs_fds = cgroup.procs_fds() if cgroup is not None else []
    fds = [filter_fd] if ctrl_fd is None else [ctrl_fd, filter_fd]
    if sync is not None:
        fds += [sync[1], sync[2]]
    try:
        proc = subprocess.Popen(
            argv,
            env={"PATH": "/usr/bin:/bin"},  # bwrap's own; the sandbox gets --setenv
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(fds),
            close_fds=True,
            start_new_session=True,
            preexec_fn=_Preexec(procs_fds, limits, cfg.host_uid, mounts),
        )
    except BaseException:
        if sync is not None:
            for fd in sync:
                os.close(fd)
        raise
    finally:
        for fd in procs_fds:
            os.close(fd)
    if sync is None:
        return proc, None
    info_r, info_w, block_r, block_w = sync
    os.close(info_w)
    os.close(block_r)
    link = EgressLink(cfg.egress) if cfg.egress is not None else None
    try:
        pid = wait_child_pid(info_r)
        if link is not None:
            link.attach(pid)
        if cfg.join_network is not None:
            cfg.join_network(pid)
        os.write(block_w, b"1")  # the filter holds and the network is up: let it run
    except BaseException:
        if link is not None:
            link.close()
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        os.close(info_r)
        os.close(block_w)
    return proc, link


def remove_stage(cfg: SandboxConfig) -> None:
    """Delete the (unmounted, once the sandbox is gone) staging directory of ``cfg``."""
    shutil.rmtree(cfg.run_dir.parent / (cfg.run_dir.name + "-stage"), ignore_errors=True)


_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


class _Preexec:
    """Runs in the child between fork and exec: join the sandbox's cgroups, set rlimits that
    bound the whole sandbox and, with a host uid, stage the sandbox's host paths in a private
    mount namespace and become that uid. No imports, no locks; any failure aborts the spawn
    (Popen raises it in the agent)."""

    def __init__(
        self,
        procs_fds: list[int],
        limits: dict[str, int],
        host_uid: int | None = None,
        mounts: list[tuple[str, str]] | None = None,
    ) -> None:
        import ctypes
        import resource

        self.procs_fds = procs_fds
        self.rlimits = [
            (getattr(resource, name), value) for name, value in limits.items() if value > 0
        ]
        self.setrlimit = resource.setrlimit
        self.host_uid = host_uid
        self.mounts = [(a.encode(), b.encode()) for a, b in mounts or []]
        self.libc = ctypes.CDLL(None, use_errno=True) if host_uid is not None else None
        self.get_errno = ctypes.get_errno

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            err = self.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def __call__(self) -> None:
        for fd in self.procs_fds:
            os.write(fd, b"0")
        for which, value in self.rlimits:
            self.setrlimit(which, (value, value))
        if self.host_uid is None or self.libc is None:
            return
        libc = self.libc
        if self.mounts:
            self._check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            self._check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount private")
            for src, dst in self.mounts:
                self._check(libc.mount(src, dst, None, _MS_BIND | _MS_REC, None), "bind mount")
        os.setgroups([])
        os.setgid(self.host_uid)
        os.setuid(self.host_uid)
