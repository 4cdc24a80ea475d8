"""Hostile functions: each tries one way out of the sandbox and reports what it saw.

They run in real bwrap sandboxes through the real agent and worker (tests/sandbox/). Each
returns observations (or raises), and the tests assert that every attempt was contained.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import time
from typing import Any

import crucible

app = crucible.App("hostile")
neighbours = crucible.App("neighbour")


def _try_read(path: str) -> str:
    try:
        if os.path.isdir(path):
            return "listed:" + ",".join(sorted(os.listdir(path))[:20])
        with open(path, "rb") as f:
            return "read:" + f.read(200).decode("utf-8", "replace")
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "OSError")


def _try_write(path: str) -> str:
    try:
        with open(path, "wb") as f:
            f.write(b"pwned")
        return "wrote"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "OSError")


@app.function(timeout=30)
def read_paths(paths: list[str]) -> dict[str, str]:
    """Read (or list) host paths: the agent's token, its directories, the host's home."""
    return {p: _try_read(p) for p in paths}


@app.function(timeout=30)
def identity() -> dict[str, Any]:
    with open("/proc/self/status") as f:
        status = f.read()
    caps = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if "Cap" in line}
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "caps": caps,
        "cwd": os.getcwd(),
        "env": sorted(os.environ),
        "work": sorted(os.listdir("/crucible/work")),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@app.function(timeout=30)
def other_processes() -> dict[str, str]:
    """Every process visible in /proc, with its command line and (if readable) environment."""
    seen = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        cmd = _try_read(f"/proc/{pid}/cmdline").replace("\0", " ")
        env = _try_read(f"/proc/{pid}/environ")
        seen[pid] = f"{cmd} || {env}"
    return seen


@app.function(timeout=30)
def write_everywhere() -> dict[str, str]:
    """Write to the root, the system, the interpreter, the image and the code."""
    targets = ["/pwned", "/usr/pwned", "/etc/pwned", f"{sys.prefix}/pwned"]
    targets += [f"{p}/pwned" for p in sys.path if p and os.path.isdir(p)]
    targets += ["/crucible/code/pwned", "/crucible/run/pwned"]
    return {t: _try_write(t) for t in targets}


@app.function(timeout=30)
def connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


@app.function(timeout=30, network=True)
def connect_with_network(host: str, port: int) -> str:
    return connect.raw_f(host, port)


@app.function(timeout=60)
def fork_bomb() -> dict[str, Any]:
    """Fork until the kernel refuses; then clean up and report how far it got."""
    children = []
    error = ""
    try:
        for _ in range(100_000):
            pid = os.fork()
            if pid == 0:
                time.sleep(120)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0, "OSError")
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return {"forked": len(children), "error": error}


@app.function(timeout=60, memory="256MiB")
def memory_bomb() -> int:
    """Allocate 64 MiB at a time until something stops it."""
    hoard = []
    for _ in range(1024):
        hoard.append(bytearray(64 * 1024 * 1024))
    return len(hoard)


@app.function(timeout=60)
def fill_disk() -> dict[str, str]:
    out = {}
    for where in ("/tmp", os.getcwd()):
        try:
            with open(os.path.join(where, "fill"), "wb") as f:
                chunk = b"x" * (1 << 20)
                for _ in range(1 << 20):
                    f.write(chunk)
                    f.flush()
            out[where] = "filled without limit"
        except OSError as exc:
            out[where] = errno.errorcode.get(exc.errno or 0, "OSError")
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(where, "fill"))
    return out


@app.function(timeout=2)
def spin_forever() -> None:
    """Ignore the worker's timeout alarm and spin."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    while True:
        pass


@app.function(timeout=30)
def kill_parent() -> str:
    os.kill(os.getppid(), signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(1, signal.SIGKILL)
    time.sleep(30)
    return "still here"


@app.function(timeout=30)
def fd_escape(targets: list[str]) -> dict[str, str]:
    """Walk out through /proc/self/fd, /proc/self/cwd and /proc/<pid>/root."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        link = f"/proc/self/fd/{fd}"
        with contextlib.suppress(OSError):
            out[f"fd{fd}"] = os.readlink(link)
        for rel in ("..", "../..", "../../.."):
            out[f"fd{fd}/{rel}"] = _try_read(f"{link}/{rel}")
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        out[f"root{pid}"] = _try_read(f"/proc/{pid}/root/")
    for t in targets:
        out[f"cwd:{t}"] = _try_read(f"/proc/self/cwd/../../..{t}")
        out[f"root:{t}"] = _try_read(f"/proc/1/root{t}")
    return out


@app.function(timeout=30)
def forbidden_syscalls() -> dict[str, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    results = {}

    def call(name: str, *args: Any) -> None:
        rc = getattr(libc, name)(*args)
        results[name] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")

    call("unshare", 0x10000000)  # CLONE_NEWUSER
    call("mount", b"none", b"/tmp", b"tmpfs", 0, None)
    call("ptrace", 16, 1, None, None)  # PTRACE_ATTACH to pid 1
    call("setns", 0, 0)
    keyctl = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
    rc = libc.syscall(keyctl, 0, 0, 0, 0, 0)
    results["keyctl"] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    return results


# -- the neighbour: another tenant whose calls must keep working during every attack ----------
@neighbours.function(timeout=30)
def ping(i: int) -> int:
    with open("secret.txt", "w") as f:  # in its own work dir
        f.write(f"neighbour secret {i}")
    return i


@neighbours.function(timeout=30)
def neighbour_work_dir() -> str:
    return os.path.basename(os.getcwd())


@app.function(timeout=60, memory="64MiB")
def tmpfs_memory_bomb() -> str:
    """Fill /tmp, which is memory, not address space: only the memory cgroup can stop it."""
    with open("/tmp/hoard", "wb") as f:
        for _ in range(768):
            f.write(b"x" * (1 << 20))
    return "wrote 768 MiB"
