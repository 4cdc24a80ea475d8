"""The zygote: a warm Python process that forks containers on demand.

One zygote runs per (account, image, network, GPU set) on a host, inside the sandbox the
agent built for it. It imports the image's heavy modules once (``CRUCIBLE_PRELOAD``, e.g.
``torch``), then forks a container for each request: the child is a fresh worker whose
imports are already done, so it reaches its first input in milliseconds instead of seconds.

Run as ``python -m crucible.worker.zygote --ctrl-fd N``. The control channel is a Unix
stream socket to the agent carrying one JSON object per line, plus file descriptors::

    agent → zygote  {"op": "fork", "cid", "env", "assignment", "limits", "warm"}  + log fd
                    {"op": "signal", "cid", "sig"}
                    {"op": "exec", "cid", "sid", "argv", "module", "env", "tty"}
                                                          + stdin, stdout, stderr fds
                    {"op": "connect", "cid", "sid", "port"} + one end of a socket pair
                    {"op": "kill-exec", "sid"}
    zygote → agent  {"op": "ready", "pid", "preloaded", "failed", "import_s"}
                    {"op": "started", "cid", "pid"}
                    {"op": "exited", "cid", "status"}      (status as in subprocess)
                    {"op": "exec-exited", "sid", "status"}

An ``exec`` (``crucible container exec``, an SSH server) or ``connect`` (a TCP tunnel to a
port of the sandbox's network namespace) is forked from here too, so it runs exactly where
the container runs: same namespaces, uid, mounts, cgroup and seccomp filter. It gets its own
session (a terminal's controlling tty with ``tty``), the container's work directory, and ends
when its container ends.

What a forked child does before it runs the worker: a new session (its own process group,
so a stop reaches everything it started), ``PR_SET_PDEATHSIG``, its own work directory
``/crucible/work/<cid>`` (on the sandbox's size-limited tmpfs), resource limits (address space,
file size, open files, no core dumps), the log file the agent opened as stdout and stderr,
and an environment built from scratch by the agent.

A container that ends leaves nothing behind: its process group is killed, then every process
still in its session (children that left the group), and once the sandbox holds no container,
every process in the sandbox but the zygote (children that left the session too). The
sandbox's own PID namespace makes "every process" exactly this sandbox's.

CUDA is never initialised here: nothing in this module touches a GPU, and
:mod:`crucible.sdk._image` documents that preloaded modules must not either. Threads are
never started here, so ``fork()`` is safe.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import errno
import fcntl
import importlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import termios
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main"]

_WORK_ROOT = Path("/crucible/work")
_CODE_ROOT = Path("/crucible/code")
_PR_SET_PDEATHSIG = 1
_MAX_FDS = 4


class _Channel:
    """JSON lines over the control socket; fds ride along with fork requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def receive(self) -> list[dict[str, Any]] | None:
        """Messages now readable; None at end of stream (the agent is gone)."""
        fds = array.array("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            1 << 16, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize)
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        self.fds.extend(fds)
        if not data:
            return None
        self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out


def _preload(modules: list[str]) -> tuple[list[str], dict[str, str]]:
    loaded, failed = [], {}
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except BaseException as exc:  # a broken preload must not take the zygote down
            failed[name] = f"{type(exc).__name__}: {exc}"
    return loaded, failed


def _warm(sha: str, module_name: str) -> None:
    """Import the user's module and run its snapshot hooks here, before forking, so every
    later container of this code starts with both done. Failures are left for the child to
    meet (and report) on its own import."""
    from crucible.sdk._hooks import enter_hooks
    from crucible.worker.main import SNAPSHOT_DONE, forget_other_bundles

    path = str(_CODE_ROOT / sha)
    if not Path(path).is_dir():
        return
    forget_other_bundles(_CODE_ROOT, Path(path))  # another version warmed before this one
    if module_name in sys.modules:
        return
    sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
        for hook in enter_hooks(module, snapshot=True):
            hook()
        setattr(module, SNAPSHOT_DONE, True)
    except BaseException:
        traceback.print_exc()
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(path)


# Address space is not memory: each thread reserves its stack, and shared libraries map far
# more than they use (torch's CPU build: about 600 MiB). Where RLIMIT_AS is the only memory
# bound (no memory cgroup), a container gets this much address space on top of its memory=,
# and glibc's malloc keeps at most two arenas (each reserves 64 MiB of address space; one
# per thread, by default, made 8 threads fail at the default 512 MiB).
_ADDRESS_HEADROOM = 512 * 1024 * 1024
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
_MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to limit
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)


def _vm_size_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(ctrl: socket.socket, msg: dict[str, Any], log_fd: int, keep: set[int]) -> None:
    """In the forked child: become the container, then run the worker. Never returns."""
    rc = 1
    try:
        ctrl.close()
        for fd in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.setsid()
        # Under the sandbox's memory limit the kernel should kill the container that grew,
        # not the zygote every other container of the sandbox depends on.
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        # As in any Python process: a write to a closed connection is an error the worker
        # handles (the control plane restarting), not a signal that kills the container
        # (SIG_DFL did, within a second of a server crash). Programs it runs get the default
        # back (subprocess restores it).
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if log_fd > 2:
            os.close(log_fd)
        cid = msg["cid"]
        work = _WORK_ROOT / cid
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chdir(work)
        assignment = work / "assignment.json"
        fd = os.open(assignment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(msg["assignment"])
        workdir = msg.get("workdir")  # an OCI image's WORKDIR (read-only: /tmp is writable)
        if isinstance(workdir, str) and os.path.isdir(workdir):
            os.chdir(workdir)
        limits = msg.get("limits", {})
        memory = int(limits.get("memory_bytes", 0))
        if memory > 0:
            # The zygote's own mappings (the preloaded modules) are shared, not the child's:
            # count only what the container adds on top of them.
            _limit_malloc_arenas()
            cap = _vm_size_bytes() + memory + _ADDRESS_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        for name, value in (
            ("RLIMIT_FSIZE", limits.get("file_bytes")),
            ("RLIMIT_NOFILE", limits.get("open_files")),
            ("RLIMIT_NPROC", limits.get("processes")),
            ("RLIMIT_CORE", 0),
        ):
            if value is not None:
                resource.setrlimit(getattr(resource, name), (int(value), int(value)))
        env = dict(msg["env"])
        env["HOME"] = str(work)
        env["CRUCIBLE_ASSIGNMENT"] = str(assignment)
        os.environ.clear()
        os.environ.update(env)
        from crucible.worker.main import main as worker_main

        rc = worker_main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(rc)


def serve(ctrl: socket.socket) -> int:
    started = time.perf_counter()
    # The worker itself first: its imports (pydantic, the protocol) are most of a plain
    # container's start-up time.
    modules = ["crucible.worker.main"]
    modules += [m for m in os.environ.get("CRUCIBLE_PRELOAD", "").split(",") if m]
    loaded, failed = _preload(modules)
    chan = _Channel(ctrl)
    chan.send(
        {
            "op": "ready",
            "pid": os.getpid(),
            "preloaded": loaded,
            "failed": failed,
            "import_s": time.perf_counter() - started,
        }
    )
    children: dict[int, tuple[str, int]] = {}  # pidfd → (cid, pid)
    by_cid: dict[str, int] = {}
    execs: dict[int, tuple[str, int, str]] = {}  # pidfd → (sid, pid, cid): exec and connect
    while True:
        watched: list[int] = [ctrl.fileno(), *children, *execs]
        readable, _, _ = select.select(watched, [], [])
        for r in readable:
            if r == ctrl.fileno():
                msgs = chan.receive()
                if msgs is None:
                    for _cid, pid in children.values():
                        with contextlib.suppress(OSError):
                            os.killpg(pid, signal.SIGKILL)
                    return 0
                for msg in msgs:
                    if msg.get("op") in ("exec", "connect"):
                        _handle_exec(ctrl, chan, msg, children, execs)
                    elif msg.get("op") == "kill-exec":
                        for sid, exec_pid, _cid in execs.values():
                            if sid == msg.get("sid"):
                                with contextlib.suppress(OSError):
                                    os.killpg(exec_pid, signal.SIGKILL)
                    else:
                        _handle(ctrl, chan, msg, children, by_cid)
                continue
            if r in execs:
                sid, pid, _cid = execs.pop(r)
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                os.close(r)
                _EXEC_FDS.discard(r)
                chan.send(
                    {"op": "exec-exited", "sid": sid, "status": os.waitstatus_to_exitcode(status)}
                )
                continue
            cid, pid = children.pop(r)
            for _sid, exec_pid, exec_cid in execs.values():
                if exec_cid == cid:  # a session ends with its container
                    with contextlib.suppress(OSError):
                        os.killpg(exec_pid, signal.SIGKILL)
            by_cid.pop(cid, None)
            # The child is a zombie until reaped, which pins its process-group id: clear out
            # anything it left in its group first.
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            kill_leftovers(pid)  # its session: children that left its process group
            _, status = os.waitpid(pid, 0)
            os.close(r)
            if not children and _in_own_pid_namespace():
                kill_leftovers(None)  # no container left: nothing else may live here
            shutil.rmtree(_WORK_ROOT / cid, ignore_errors=True)
            chan.send({"op": "exited", "cid": cid, "status": os.waitstatus_to_exitcode(status)})


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[3])
    except (IndexError, ValueError):
        return None


def _in_own_pid_namespace() -> bool:
    """Whether this zygote runs under bubblewrap's init as pid 1 of its own PID namespace (the
    only place where killing "every other process" is right)."""
    try:
        with open("/proc/1/comm", encoding="utf-8") as f:
            return os.getppid() == 1 and f.read().strip() == "bwrap"
    except OSError:
        return False


def kill_leftovers(session: int | None) -> int:
    """SIGKILL the processes of this PID namespace left by an ended container: those of
    ``session``, or with ``None`` every process but this one and the namespace's init. Returns
    how many were signalled."""
    me = os.getpid()
    killed = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in (me, 1):
            continue
        if session is not None and _session_of(pid) != session:
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _handle(
    ctrl: socket.socket,
    chan: _Channel,
    msg: dict[str, Any],
    children: dict[int, tuple[str, int]],
    by_cid: dict[str, int],
) -> None:
    op = msg.get("op")
    if op == "signal":
        pid = by_cid.get(msg["cid"])
        if pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(pid, int(msg["sig"]))
        return
    if op != "fork":
        return
    if not chan.fds:
        chan.send({"op": "exited", "cid": msg["cid"], "status": 2, "error": "no log fd"})
        return
    log_fd = chan.fds.pop(0)
    warm = msg.get("warm")
    if warm:
        _warm(str(warm["sha"]), str(warm["module"]))
    keep = {*children, *chan.fds, *_EXEC_FDS}
    try:
        pid = os.fork()
    except OSError as exc:  # the sandbox's process limit: this container fails, we go on
        os.close(log_fd)
        error = f"cannot fork the container: {exc.strerror} (the sandbox's process limit?)"
        chan.send({"op": "exited", "cid": msg["cid"], "status": 1, "error": error})
        return
    if pid == 0:
        _child(ctrl, msg, log_fd, keep)
    os.close(log_fd)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = (msg["cid"], pid)
    by_cid[msg["cid"]] = pid
    chan.send({"op": "started", "cid": msg["cid"], "pid": pid})


_EXEC_FDS: set[int] = set()  # pidfds of exec children, closed in every forked child


def _handle_exec(
    ctrl: socket.socket,
    chan: _Channel,
    msg: dict[str, Any],
    children: dict[int, tuple[str, int]],
    execs: dict[int, tuple[str, int, str]],
) -> None:
    """Fork an exec (three fds: stdin, stdout, stderr) or a connect (one socket)."""
    sid, cid = str(msg.get("sid")), str(msg.get("cid"))
    want = 3 if msg["op"] == "exec" else 1
    if len(chan.fds) < want:
        chan.send({"op": "exec-exited", "sid": sid, "status": 2, "error": "fds missing"})
        return
    fds = [chan.fds.pop(0) for _ in range(want)]
    if cid not in {c for c, _ in children.values()}:
        for fd in fds:
            if fd > 2:
                os.close(fd)
        chan.send({"op": "exec-exited", "sid": sid, "status": 2, "error": "no such container"})
        return
    keep = {*children, *execs, *chan.fds}
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        chan.send({"op": "exec-exited", "sid": sid, "status": 1, "error": exc.strerror})
        return
    if pid == 0:
        if msg["op"] == "exec":
            _exec_child(ctrl, msg, fds, keep)
        _connect_child(ctrl, msg, fds[0], keep)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    execs[pidfd] = (sid, pid, cid)
    _EXEC_FDS.add(pidfd)


def _become_session(ctrl: socket.socket, keep: set[int]) -> None:
    ctrl.close()
    for fd in keep:
        with contextlib.suppress(OSError):
            os.close(fd)
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)


def _exec_child(ctrl: socket.socket, msg: dict[str, Any], fds: list[int], keep: set[int]) -> None:
    """In the forked child: become the session's process in the container. Never returns;
    a program that does not exist exits 127 with a line on stderr saying so."""
    argv: list[str] = list(msg.get("argv") or [])
    try:
        _become_session(ctrl, keep)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        if msg.get("tty"):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        env = {str(k): str(v) for k, v in dict(msg.get("env") or {}).items()}
        # A pod's sessions start in its disk, as its command does; a function's in its work.
        work = Path(env.get("CRUCIBLE_POD_DISK") or _WORK_ROOT / str(msg["cid"]))
        os.chdir(work if work.is_dir() else _WORK_ROOT)
        env["HOME"] = str(work)
        if msg.get("module"):
            argv = [sys.executable, "-m", str(msg["module"])]
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            text = (
                f"crucible: no program {argv[0]!r} in this container; an image without "
                "it (e.g. without a shell) cannot run it: name a program the image has\n"
            )
            rc = 127
        else:
            text = f"crucible: cannot run {argv[:1]!r} in this container: {exc.strerror}\n"
            rc = 126
        with contextlib.suppress(OSError):
            os.write(2, text.encode())
        os._exit(rc)
    except BaseException:
        traceback.print_exc()
    os._exit(126)


def _connect_child(ctrl: socket.socket, msg: dict[str, Any], fd: int, keep: set[int]) -> None:
    """In the forked child: connect to ``port`` on the sandbox's loopback and pipe it to the
    agent's socket. The first byte says whether it connected (0) or not (1 + a reason)."""
    rc = 0
    try:
        _become_session(ctrl, keep)
        agent = socket.socket(fileno=fd)
        port = int(msg["port"])
        try:
            inner = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            agent.sendall(
                b"\x01nothing accepts connections on port %d inside the container (%s)"
                % (port, (exc.strerror or str(exc)).encode())
            )
            os._exit(1)
        inner.settimeout(None)
        agent.sendall(b"\x00")
        _pipe(agent, inner)
    except BaseException:
        traceback.print_exc()
        rc = 1
    os._exit(rc)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both directions are closed (half-closes passed on)."""
    open_ = {a: b, b: a}
    while open_:
        readable, _, _ = select.select(list(open_), [], [])
        for src in readable:
            dst = open_[src]
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if data:
                try:
                    dst.sendall(data)
                    continue
                except OSError:
                    return
            open_.pop(src, None)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crucible.worker.zygote")
    parser.add_argument("--ctrl-fd", type=int, required=True)
    args = parser.parse_args(argv)
    ctrl = socket.socket(fileno=args.ctrl_fd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return serve(ctrl)


if __name__ == "__main__":
    sys.exit(main())
