"""Choosing the agent's container runtime (``CRUCIBLE_RUNTIME`` / ``--runtime``).

- ``auto`` (the default): ``bwrap`` where this machine can sandbox, else ``process`` with a
  warning saying what is missing.
- ``bwrap``: :class:`crucible.agent.sandbox_runtime.SandboxRuntime`, bubblewrap sandboxes
  forked from per-image zygotes, images built with uv. For code from other people.
- ``process``: :class:`crucible.agent.runtime.ProcessRuntime`, plain child processes, no
  isolation: an explicit choice, and such a host runs its owner's code only.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from crucible.agent.exec_process import ExecProcess
from crucible.agent.ssh_bundle import SshServer
from crucible.errors import InvalidRequestError, SandboxUnavailableError
from crucible.protocol.containers import ContainerAssignment, ContainerReport
from crucible.protocol.hosts import IsolationReport
from crucible.settings import Settings

__all__ = ["RUNTIMES", "Runtime", "build_runtime", "measure_isolation", "resolve_runtime"]

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "bwrap", "process")


class Runtime(Protocol):
    """What the agent needs of a runtime."""

    def knows(self, container_id: str) -> bool: ...
    def start(self, assignment: ContainerAssignment) -> None: ...
    def poll(self) -> list[ContainerReport]: ...
    def stop(self, container_id: str, grace_s: float | None = None) -> bool: ...
    def forget(self, container_id: str) -> bool: ...
    def stop_all(self, timeout_s: float | None = None) -> None: ...
    # Access sessions (agent/access.py): a process or a TCP connection inside a container.
    def exec(
        self,
        container_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        tty: bool,
        fds: tuple[int, int, int],
        module: str | None = None,
    ) -> ExecProcess: ...
    def connect(self, container_id: str, port: int) -> socket.socket: ...

    # SSH: the agent's own server for a container from an OCI image; None: the container runs
    # ``python -m crucible.worker.sshd`` (the default image).
    def ssh_server(
        self, container_id: str, session_id: str, keys: list[str], login: str
    ) -> SshServer | None: ...


def build_runtime(
    settings: Settings,
    agent_dir: Path,
    server_url: str,
    *,
    worker_argv: list[str] | None,
    on_exit: Callable[[ContainerReport], None],
) -> Runtime:
    """The runtime ``settings.runtime`` names (``auto`` resolved by :func:`resolve_runtime`).
    Raises :class:`SandboxUnavailableError` when ``bwrap`` cannot sandbox on this host, and
    :class:`InvalidRequestError` for an unknown name."""
    name = resolve_runtime(settings)
    if name == "process":
        log.warning(
            "runtime process: containers run unsandboxed as this agent's user; this host runs "
            "its owner's code only (the server places no other account's code here)"
        )
        from crucible.agent.runtime import ProcessRuntime

        return ProcessRuntime(
            agent_dir,
            server_url,
            worker_argv=worker_argv,
            stop_grace_s=settings.stop_grace_s,
            on_exit=on_exit,
        )
    if name == "bwrap":
        from crucible.agent.images import ImageCache
        from crucible.agent.sandbox import check_bwrap
        from crucible.agent.sandbox_runtime import SandboxLimits, SandboxRuntime
        from crucible.agent.uids import UidPool, can_switch_uids

        bwrap = check_bwrap(settings.bwrap_bin)
        uids = None
        if can_switch_uids():
            uids = UidPool(settings.sandbox_uid_base, settings.sandbox_uid_count)
        else:
            log.warning(
                "the agent is not root: its sandboxes share its uid, so process limits count "
                "across tenants (see docs/hosts.md); this host will not report full isolation"
            )
        from crucible.agent.oci import OciImages, RegistryConfig
        from crucible.agent.oci.python import WorkerDeps

        mib = 1024 * 1024
        try:
            registries = RegistryConfig.parse(
                settings.oci_registry_mirrors,
                settings.oci_insecure_registries,
                settings.oci_pull_timeout_s,
            )
        except ValueError as exc:
            raise InvalidRequestError(f"CRUCIBLE_OCI_REGISTRY_MIRRORS: {exc}") from None
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
                use_cgroups=settings.sandbox_cgroups,
                gpu_dev_root=settings.gpu_dev_root,
            ),
            stop_grace_s=settings.stop_grace_s,
            volume_stop_grace_s=settings.volume_stop_grace_s,
            on_exit=on_exit,
            uids=uids,
            oci=OciImages(
                agent_dir / "oci",
                registries=registries,
                max_bytes=settings.oci_cache_max_mib * mib,
                max_image_bytes=settings.oci_image_max_mib * mib,
            ),
            worker_deps=WorkerDeps(agent_dir / "oci" / "worker-deps", uv_bin=settings.uv_bin),
            cluster_net_port=settings.cluster_net_port,
        )
    raise InvalidRequestError(
        f"unknown runtime {settings.runtime!r}; choose one of: {', '.join(RUNTIMES)}"
    )


def resolve_runtime(settings: Settings) -> str:
    """``settings.runtime`` with ``auto`` made concrete: ``bwrap`` when this machine can
    sandbox, else ``process`` (logged, with what is missing)."""
    if settings.runtime != "auto":
        return settings.runtime
    from crucible.agent.sandbox import check_bwrap

    try:
        check_bwrap(settings.bwrap_bin)
    except SandboxUnavailableError as exc:
        log.warning("no sandbox on this machine (%s); falling back to the process runtime", exc)
        return "process"
    return "bwrap"


def measure_isolation(runtime: Runtime, *, gpu_indices: list[int] | None = None) -> IsolationReport:
    """What ``runtime`` enforces, measured now (a probe sandbox for ``bwrap``)."""
    from crucible.agent.isolation import measure_sandbox, process_report
    from crucible.agent.sandbox_runtime import SandboxRuntime

    if isinstance(runtime, SandboxRuntime):
        return measure_sandbox(runtime, gpu_indices=gpu_indices)
    return process_report()
