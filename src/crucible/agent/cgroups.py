"""Per-sandbox cgroups: a process-count limit (pids), a memory limit and a CPU quota, where
the agent may create cgroups (root on cgroup v1, or a writable cgroup v2 hierarchy: a systemd
unit with ``Delegate=yes``, see docs/hosts.md).

A sandbox's processes join its groups before bubblewrap runs (the spawned process writes its
own pid into each ``cgroup.procs`` between fork and exec), so nothing it forks escapes them.
The memory limit follows the sandbox's contents: the zygote's own footprint plus the
``memory`` of every live container (:meth:`SandboxCgroup.set_memory_limit`); the CPU quota
follows the ``cpu`` of its live containers the same way (:meth:`SandboxCgroup.set_cpu_limit`).

Where a controller is not writable, :func:`sandbox_cgroup` leaves it out (and returns None
when neither is): the runtime then relies on rlimits alone (``RLIMIT_NPROC``,
``RLIMIT_AS``; see docs/sandbox.md for what those do and do not bound).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

__all__ = ["SandboxCgroup", "sandbox_cgroup"]

log = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")
_CPU_PERIOD_US = 100_000


class SandboxCgroup:
    """The cgroup directories of one sandbox (one per hierarchy on v1, one on v2)."""

    def __init__(
        self,
        dirs: list[Path],
        pids: bool,
        memory_file: Path | None,
        cpu_file: Path | None = None,
    ) -> None:
        self.dirs = dirs
        self.pids = pids
        self.memory_file = memory_file
        self.cpu_file = cpu_file  # cpu.max (v2) or cpu.cfs_quota_us (v1)

    def set_cpu_limit(self, cores: float) -> None:
        """Cap the sandbox's CPU time at ``cores`` CPUs (0 or less: no cap)."""
        if self.cpu_file is None:
            return
        period = _CPU_PERIOD_US
        quota = max(int(cores * period), 1000) if cores > 0 else -1
        if self.cpu_file.name == "cpu.max":
            value = f"{quota if quota > 0 else 'max'} {period}"
        else:
            value = str(quota)
        try:
            self.cpu_file.write_text(value)
        except OSError as exc:
            log.warning("could not set the CPU quota of %s: %s", self.cpu_file.parent, exc)

    def procs_fds(self) -> list[int]:
        """Fds on each ``cgroup.procs``: the child writes b"0" to them to join (no path
        lookups between fork and exec). The caller closes them."""
        return [os.open(d / "cgroup.procs", os.O_WRONLY) for d in self.dirs]

    def memory_usage(self) -> int:
        """Bytes charged to the sandbox now (0 without a memory controller)."""
        if self.memory_file is None:
            return 0
        name = (
            "memory.current" if self.memory_file.name == "memory.max" else "memory.usage_in_bytes"
        )
        try:
            return int((self.memory_file.parent / name).read_text().strip())
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the sandbox's memory limit so far."""
        if self.memory_file is None:
            return 0
        name = "memory.events" if self.memory_file.name == "memory.max" else "memory.oom_control"
        try:
            for line in (self.memory_file.parent / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def set_memory_limit(self, limit: int) -> None:
        """Set the sandbox's memory limit; a failure (a limit below what is in use, on v1)
        is logged and the old limit stays."""
        if self.memory_file is None:
            return
        try:
            self.memory_file.write_text(str(limit))
        except OSError as exc:
            log.warning("could not set the memory limit of %s: %s", self.memory_file.parent, exc)

    def remove(self, wait_s: float = 2.0) -> None:
        """Delete the groups once empty: processes killed with the sandbox may take a moment
        to leave them, so retry for up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() >= deadline:
                        log.warning("could not remove cgroup %s: %s", d, exc)
                        break
                    time.sleep(0.02)


def _v2() -> bool:
    return (_ROOT / "cgroup.controllers").exists()


def _mkgroup(base: Path, name: str, controllers: str | None) -> Path | None:
    parent = base / "crucible"
    path = parent / name
    try:
        parent.mkdir(exist_ok=True)
        if controllers:  # v2: each level must hand the controllers down to its children
            for level in (base, parent):
                with contextlib.suppress(OSError):
                    (level / "cgroup.subtree_control").write_text(controllers)
        path.mkdir(exist_ok=True)
    except OSError as exc:
        log.debug("no cgroup under %s for sandboxes (%s)", base, exc)
        return None
    return path


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def sandbox_cgroup(name: str, max_pids: int, memory_bytes: int) -> SandboxCgroup | None:
    """Create ``crucible/<name>`` groups limiting processes to ``max_pids`` and memory to
    ``memory_bytes`` where the host allows each; None when it allows neither."""
    if _v2():
        available = (_ROOT / "cgroup.controllers").read_text().split()
        wanted = " ".join(f"+{c}" for c in ("pids", "memory", "cpu") if c in available)
        path = _mkgroup(_ROOT, name, wanted)
        if path is None:
            return None
        pids = _write(path / "pids.max", str(max_pids))
        memory = _write(path / "memory.max", str(memory_bytes))
        cpu = _write(path / "cpu.max", f"max {_CPU_PERIOD_US}")
        if not (pids or memory):
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return SandboxCgroup(
            [path],
            pids,
            path / "memory.max" if memory else None,
            path / "cpu.max" if cpu else None,
        )
    dirs: list[Path] = []
    pids = False
    memory_file = None
    pids_dir = _mkgroup(_ROOT / "pids", name, None) if (_ROOT / "pids").is_dir() else None
    if pids_dir is not None:
        if _write(pids_dir / "pids.max", str(max_pids)):
            dirs.append(pids_dir)
            pids = True
        else:
            with contextlib.suppress(OSError):
                pids_dir.rmdir()
    mem_base = _ROOT / "memory"
    mem_dir = _mkgroup(mem_base, name, None) if mem_base.is_dir() else None
    if mem_dir is not None:
        if _write(mem_dir / "memory.limit_in_bytes", str(memory_bytes)):
            dirs.append(mem_dir)
            memory_file = mem_dir / "memory.limit_in_bytes"
        else:
            with contextlib.suppress(OSError):
                mem_dir.rmdir()
    if not dirs:
        return None
    cpu_file = None
    cpu_base = _ROOT / "cpu"
    cpu_dir = _mkgroup(cpu_base, name, None) if cpu_base.is_dir() else None
    if cpu_dir is not None:
        if _write(cpu_dir / "cpu.cfs_period_us", str(_CPU_PERIOD_US)):
            dirs.append(cpu_dir)
            cpu_file = cpu_dir / "cpu.cfs_quota_us"
        else:
            with contextlib.suppress(OSError):
                cpu_dir.rmdir()
    return SandboxCgroup(dirs, pids, memory_file, cpu_file)
