"""Which root filesystem a pod runs: the one seam between pods and OCI images.

:func:`resolve_pod_image` is the only place the agent's runtimes ask what a pod's ``image``
means. Today a pod without an image runs the exchange's default image (the host's own
Python and shell, in the runtime's sandbox); a pod with an OCI reference is refused with a
clear message until OCI pulls land in the agent (``agent/oci/``: ``OciImages.prepare``), at
which point this function routes the reference there and returns the prepared root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crucible.errors import ImageBuildError

__all__ = ["DEFAULT_POD_IMAGE", "POD_DISK_PATH", "PodImage", "pod_disk_dir", "resolve_pod_image"]


@dataclass(frozen=True)
class PodImage:
    """A pod's image, ready to run. ``rootfs`` None: the host's own root (the default)."""

    ref: str | None
    rootfs: Path | None = None
    digest: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


DEFAULT_POD_IMAGE = PodImage(ref=None)
# Where a sandboxed pod sees its disk (the process runtime uses the host path itself).
POD_DISK_PATH = "/pod"


def resolve_pod_image(ref: str | None) -> PodImage:
    """The image a pod runs. Raises :class:`ImageBuildError` (the message names what to do)
    when this agent cannot provide ``ref``."""
    if ref is None:
        return DEFAULT_POD_IMAGE
    raise ImageBuildError(
        f"this host cannot run OCI image {ref!r}: OCI image pulls are not available in this "
        "agent yet; create the pod without --image to run the exchange's default image"
    )


def pod_disk_dir(agent_dir: Path, pod_id: str) -> Path:
    """The pod's disk on this host, created if needed: ``<agent_dir>/pods/<pod id>/disk``.
    It outlives the pod's containers, so a pod stopped and started again on the same host
    finds its files."""
    if not pod_id.replace("-", "").replace("_", "").isalnum():
        raise ImageBuildError(f"invalid pod id {pod_id[:40]!r}")
    disk = agent_dir / "pods" / pod_id / "disk"
    disk.mkdir(parents=True, exist_ok=True)
    disk.chmod(0o700)
    return disk
