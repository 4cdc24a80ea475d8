"""Host uids for sandboxes: each live sandbox runs as its own host uid from a range the agent
owns (``CRUCIBLE_SANDBOX_UID_BASE`` / ``CRUCIBLE_SANDBOX_UID_COUNT``).

Inside, the sandbox is uid 1000 (bubblewrap maps 1000 → the host uid). Because the host uid is
the sandbox's own, what the kernel counts or checks per uid is per sandbox: ``RLIMIT_NPROC``
(a fork bomb exhausts its own sandbox's process count, not its neighbours'), who may signal or
ptrace whom, and who owns which file.

A uid is held with an ``flock`` on ``<lock_dir>/<uid>.lock`` for as long as the sandbox lives,
so several agents on one machine (or a restarted agent) never hand out the same uid twice. A
uid that still owns a process (a leftover the kernel has not yet reaped) is skipped.

Only root can switch to another uid; :func:`can_switch_uids` says whether this agent can.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from pathlib import Path

from crucible.errors import InvalidRequestError

__all__ = ["SandboxUid", "UidPool", "can_switch_uids", "processes_of_uid"]

# bwrap writes the uid map with a signed int: uids from 2**31 on fail ("setting up uid map").
_UID_LIMIT = 2**31 - 1


def can_switch_uids() -> bool:
    """Whether this process may run sandboxes as other uids (it is root)."""
    return os.geteuid() == 0


def _default_lock_dir() -> Path:
    run = Path("/run")
    if run.is_dir() and os.access(run, os.W_OK):
        return run / "crucible-uids"
    return Path(tempfile.gettempdir()) / "crucible-uids"


def processes_of_uid(uid: int) -> list[int]:
    """Pids of the processes whose real uid is ``uid`` (read from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return out


class SandboxUid:
    """One uid held for one sandbox; :meth:`release` gives it back (idempotent)."""

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self._fd: int | None = lock_fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class UidPool:
    """Hands out uids ``base .. base + count - 1``, each to one sandbox at a time. Raises
    :class:`InvalidRequestError` for a range bwrap cannot map."""

    def __init__(self, base: int, count: int, lock_dir: Path | None = None) -> None:
        if base < 1000 or count < 1 or base + count > _UID_LIMIT:
            raise InvalidRequestError(
                f"sandbox uid range {base}+{count} is not usable: pick a base of at least 1000 "
                f"and a range that ends by {_UID_LIMIT} (CRUCIBLE_SANDBOX_UID_BASE/COUNT)"
            )
        self.base = base
        self.count = count
        self.lock_dir = lock_dir or _default_lock_dir()
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> SandboxUid:
        """A uid no other live sandbox on this machine holds. Raises RuntimeError when the
        whole range is in use."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            for _ in range(self.count):
                uid = self.base + self._next
                self._next = (self._next + 1) % self.count
                fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                if processes_of_uid(uid):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                    continue
                return SandboxUid(uid, fd)
        raise RuntimeError(
            f"all {self.count} sandbox uids from {self.base} are in use; raise "
            "CRUCIBLE_SANDBOX_UID_COUNT"
        )
