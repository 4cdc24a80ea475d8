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
newcomers = crucible.App("newcomer")  # a third tenant whose first container starts mid-attack


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


@app.function(timeout=60)
def start_threads(n: int) -> int:
    """Not hostile: many threads at the default memory= (each reserves address space)."""
    import threading

    threads = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n


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


# -- cross-tenant attacks (tests/sandbox/test_tenancy.py) --------------------------------------
@app.function(timeout=60)
def fork_bomb_and_stay() -> dict[str, Any]:
    """Fork until the kernel refuses and LEAVE the children running (half of them in sessions
    of their own, out of the container's process group), then return: the container stays
    warm with its children alive."""
    forked = 0
    error = ""
    try:
        for i in range(100_000):
            pid = os.fork()
            if pid == 0:
                if i % 2:
                    os.setsid()
                time.sleep(600)
                os._exit(0)
            forked += 1
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0, "OSError")
    return {"forked": forked, "error": error}


@app.function(timeout=60)
def cpu_hog(seconds: float) -> int:
    """Spin on every core the sandbox can see for ``seconds``."""
    pids = []
    for _ in range(max(os.cpu_count() or 1, 2) * 2):
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return len(pids)


@app.function(timeout=60)
def log_flood(seconds: float) -> int:
    """Write to stdout and stderr as fast as possible for ``seconds``."""
    line = "x" * 4095 + "\n"
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sys.stdout.write(line)
        sys.stderr.write(line)
        n += 2
    return n


@app.function(timeout=30)
def ptrace_and_signal() -> dict[str, Any]:
    """Try to reach processes outside the sandbox: signal every pid the host could have, and
    ptrace every process visible here."""
    libc = ctypes.CDLL(None, use_errno=True)
    mine = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    reached = []
    for pid in range(1, 5000):
        if pid in mine:
            continue
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        # A thread of this sandbox answers too (/proc lists processes, not threads).
        if not os.path.exists(f"/proc/{pid}"):
            reached.append(pid)
    traced = {}
    for pid in sorted(mine - {os.getpid()}):
        rc = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
        traced[pid] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    return {"visible": sorted(mine), "signalled_outside": reached, "ptrace": traced}


@app.function(timeout=30)
def kill_everyone() -> str:
    """SIGKILL every process this sandbox's uid may signal (kill(-1)): only its own."""
    os.kill(-1, signal.SIGKILL)
    time.sleep(5)
    return "survived"


@app.function(timeout=180)
def snoop(marker: str) -> dict[str, Any]:
    """Look for another tenant's files: /crucible/work, /tmp and through /proc. It reads
    every file it can reach, each sandbox directory once per process that sees it: on a
    loaded machine that took over 30 s (a CI run), hence the long timeout."""
    found = []
    roots = ["/crucible/work", "/tmp"]
    roots += [f"/proc/{p}/root/crucible/work" for p in os.listdir("/proc") if p.isdigit()]
    roots += [f"/proc/{p}/cwd" for p in os.listdir("/proc") if p.isdigit()]
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(OSError), open(path, "rb") as f:
                    if marker.encode() in f.read(1 << 16):
                        found.append(path)
    host = {p: _try_read(p) for p in ("/proc/1/cmdline", "/proc/1/environ", "/proc/mounts")}
    return {"found": found, "host": host, "pids": sorted(os.listdir("/proc"))}


@app.function(timeout=30)
def loopback(ports: list[int]) -> dict[str, str]:
    """Connect to (and bind) the host's loopback ports, and the link-local metadata address."""
    out = {f"connect:{p}": connect.raw_f("127.0.0.1", p) for p in ports}
    for p in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            s.listen(1)
            out[f"bind:{p}"] = "bound"
        except OSError as exc:
            out[f"bind:{p}"] = errno.errorcode.get(exc.errno or 0, "OSError")
        finally:
            s.close()
    out["link-local"] = connect.raw_f("169.254.169.254", 80)
    return out


@neighbours.function(timeout=30)
def stash(marker: str) -> str:
    """Leave a secret in the neighbour's work dir and /tmp."""
    for path in ("stash.txt", "/tmp/stash.txt"):
        with open(path, "w") as f:
            f.write(marker)
    return os.getcwd()


@newcomers.function(timeout=30)
def hello() -> str:
    return "hello"


gpus = crucible.App("gpu-tenant")


@gpus.function(gpu="H100", timeout=30)
def gpu_devices() -> dict[str, Any]:
    """The GPU device nodes this container sees, and what CUDA is told."""
    return {
        "dev": sorted(d for d in os.listdir("/dev") if d.startswith("nvidia")),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@app.function(cpu=1.5, timeout=30)
def hold(seconds: float) -> str:
    """Occupy a container (cpu=1.5) for ``seconds``."""
    time.sleep(seconds)
    return "held"


owners = crucible.App("host-owner")  # the host's owner's own code (test_escapes.py)


@owners.function(timeout=30, network=True)
def owner_connect_with_network(host: str, port: int) -> str:
    return connect.raw_f(host, port)


@owners.function(timeout=30)
def owner_connect(host: str, port: int) -> str:
    return connect.raw_f(host, port)
