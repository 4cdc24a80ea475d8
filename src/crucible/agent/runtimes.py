"""Choosing the agent's container runtime (``CRUCIBLE_RUNTIME`` / ``--runtime``).

- ``process``: :class:`crucible.agent.runtime.ProcessRuntime`, plain child processes, no
  isolation. For one person's own code on their own machine (``crucible up``'s default).
- ``bwrap``: :class:`crucible.agent.sandbox_runtime.SandboxRuntime`, bubblewrap sandboxes
  forked from per-image zygotes, images built with uv. For code from other people.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from crucible.errors import InvalidRequestError
from crucible.protocol.containers import ContainerAssignment, ContainerReport
from crucible.settings import Settings

__all__ = ["RUNTIMES", "Runtime", "build_runtime"]

RUNTIMES = ("process", "bwrap")


class Runtime(Protocol):
    """What the agent needs of a runtime."""

    def knows(self, container_id: str) -> bool: ...
    def start(self, assignment: ContainerAssignment) -> None: ...
    def poll(self) -> list[ContainerReport]: ...
    def stop(self, container_id: str, grace_s: float | None = None) -> bool: ...
    def forget(self, container_id: str) -> bool: ...
    def stop_all(self, timeout_s: float | None = None) -> None: ...


def build_runtime(
    settings: Settings,
    agent_dir: Path,
    server_url: str,
    *,
    worker_argv: list[str] | None,
    on_exit: Callable[[ContainerReport], None],
) -> Runtime:
    """The runtime ``settings.runtime`` names. Raises :class:`SandboxUnavailableError` when
    ``bwrap`` cannot sandbox on this host, and :class:`InvalidRequestError` for an unknown
    name."""
    if settings.runtime == "process":
        from crucible.agent.runtime import ProcessRuntime

        return ProcessRuntime(
            agent_dir,
            server_url,
            worker_argv=worker_argv,
            stop_grace_s=settings.stop_grace_s,
            on_exit=on_exit,
        )
    if settings.runtime == "bwrap":
        from crucible.agent.images import ImageCache
        from crucible.agent.sandbox import check_bwrap
        from crucible.agent.sandbox_runtime import SandboxLimits, SandboxRuntime

        bwrap = check_bwrap(settings.bwrap_bin)
        mib = 1024 * 1024
        return SandboxRuntime(
            agent_dir,
            server_url,
            bwrap=bwrap,
            images=ImageCache(
                agent_dir / "images",
                uv_bin=settings.uv_bin,
                max_bytes=settings.image_cache_max_mib * mib,
            ),
            limits=SandboxLimits(
                disk_bytes=settings.sandbox_disk_mib * mib,
                max_pids=settings.sandbox_max_processes,
                file_bytes=settings.sandbox_disk_mib * mib,
                wall_clock_s=settings.sandbox_wall_clock_s,
                zygote_idle_s=settings.zygote_idle_s,
            ),
            stop_grace_s=settings.stop_grace_s,
            on_exit=on_exit,
        )
    raise InvalidRequestError(
        f"unknown runtime {settings.runtime!r}; choose one of: {', '.join(RUNTIMES)}"
    )
