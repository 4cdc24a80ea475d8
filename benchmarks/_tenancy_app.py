"""The apps bench_tenancy.py runs: an attacker's hostile functions and a neighbour's."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from typing import Any

import crucible

attacker = crucible.App("tenancy-attacker")
neighbour = crucible.App("tenancy-neighbour")
neighbour_cold = crucible.App("tenancy-neighbour-cold")  # a fresh app per cold sample


@neighbour.function(timeout=60)
def ping(i: int) -> int:
    return i


@neighbour_cold.function(timeout=60)
def first(i: int) -> int:
    return i


@attacker.function(timeout=120)
def fork_bomb() -> int:
    """Fork until refused and leave the children sleeping (the container stays warm)."""
    n = 0
    with contextlib.suppress(OSError):
        for _ in range(100_000):
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
            n += 1
    return n


@attacker.function(timeout=120, memory="256MiB")
def memory_bomb(seconds: float) -> str:
    """Allocate until refused, again and again, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hoard = []
        try:
            while True:
                hoard.append(bytearray(32 << 20))
        except MemoryError:
            pass
        del hoard
    return "done"


@attacker.function(timeout=120)
def cpu_hog(seconds: float) -> int:
    pids = []
    for _ in range((os.cpu_count() or 1) * 2):
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


@attacker.function(timeout=120)
def disk_filler(seconds: float) -> str:
    """Fill /tmp and the work dir to ENOSPC, delete, repeat, for ``seconds``."""
    end = time.monotonic() + seconds
    chunk = b"x" * (1 << 20)
    while time.monotonic() < end:
        for where in ("/tmp", os.getcwd()):
            path = os.path.join(where, "fill")
            try:
                with open(path, "wb") as f:
                    while True:
                        f.write(chunk)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                    raise
            with contextlib.suppress(OSError):
                os.unlink(path)
    return "done"


@attacker.function(timeout=120)
def log_flood(seconds: float) -> int:
    line = "x" * 1023 + "\n"
    n = 0
    end = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while time.monotonic() < end:
            sys.stdout.write(line)
            n += 1
    return n


def attack(name: str, seconds: float) -> Any:
    """Spawn one attack by name."""
    fn = {
        "fork bomb (children left)": fork_bomb,
        "memory bomb": memory_bomb,
        "CPU hog, all cores": cpu_hog,
        "disk filler": disk_filler,
        "log flood": log_flood,
    }[name]
    return fn.spawn() if fn is fork_bomb else fn.spawn(seconds)


ATTACKS = [
    "fork bomb (children left)",
    "memory bomb",
    "CPU hog, all cores",
    "disk filler",
    "log flood",
]


# Cold start with filtered egress (an allowlist is filtered even for the host owner's code):
# the sandbox gets slirp4netns and its nftables filter before its zygote starts.
neighbour_cold_net = crucible.App("tenancy-neighbour-cold-net")


@neighbour_cold_net.function(timeout=60, network=["198.51.100.2:8080"])
def first_net(i: int) -> int:
    return i
