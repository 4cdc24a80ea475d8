"""Children that die with their parent: ``PR_SET_PDEATHSIG`` set between fork and exec (a
worker dies with its agent, a pod's command with its supervisor); and whether a process is
still alive."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent", "load_prctl", "pid_alive"]

_PR_SET_PDEATHSIG = 1


def load_prctl() -> Callable[..., int] | None:
    # Loaded once in the parent: a preexec function runs between fork and exec, where loading
    # a library (which takes locks another thread may have held at fork time) could deadlock.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def die_with_parent(prctl: Callable[..., int] | None, parent_pid: int) -> None:
    """Runs in the child between fork and exec: no imports, no locks."""
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # The agent may have died before prctl took effect; then nobody would ever stop us.
    if os.getppid() != parent_pid:
        os._exit(1)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
