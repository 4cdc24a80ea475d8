"""Process-count limits for sandboxes through the host's pids cgroup controller, when the
agent may create cgroups (root on cgroup v1, or a writable cgroup v2 hierarchy).

A sandbox's processes join its group before bubblewrap runs (the spawned process writes its
own pid into ``cgroup.procs`` between fork and exec), so nothing it forks escapes the limit.
Where no controller is writable, :func:`pids_group` returns None and the runtime falls back to
``RLIMIT_NPROC`` (see docs/sandbox.md for what that does and does not bound).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["PidsGroup", "pids_group"]

log = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")


class PidsGroup:
    """A pids cgroup for one sandbox; :meth:`remove` deletes it once its processes ended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def procs_fd(self) -> int:
        """An fd on ``cgroup.procs``: the child writes b"0" to it to join (no path lookups
        between fork and exec). The caller closes it."""
        return os.open(self.path / "cgroup.procs", os.O_WRONLY)

    def current(self) -> int:
        try:
            return int((self.path / "pids.current").read_text().strip())
        except (OSError, ValueError):
            return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _base() -> Path | None:
    v1 = _ROOT / "pids"
    if v1.is_dir() and (v1 / "cgroup.procs").exists():
        return v1
    controllers = _ROOT / "cgroup.controllers"
    if controllers.exists() and "pids" in controllers.read_text().split():
        subtree = _ROOT / "cgroup.subtree_control"
        with contextlib.suppress(OSError):
            if "pids" not in subtree.read_text().split():
                subtree.write_text("+pids")
        return _ROOT
    return None


def pids_group(name: str, max_pids: int) -> PidsGroup | None:
    """Create ``crucible/<name>`` with ``pids.max``; None when the host does not allow it."""
    base = _base()
    if base is None:
        return None
    parent = base / "crucible"
    path = parent / name
    try:
        parent.mkdir(exist_ok=True)
        if base == _ROOT:  # v2: the parent must hand the controller down to its children
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text("+pids")
        path.mkdir(exist_ok=True)
        (path / "pids.max").write_text(str(max_pids))
    except OSError as exc:
        log.debug("no pids cgroup for sandboxes (%s); using RLIMIT_NPROC", exc)
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return PidsGroup(path)
