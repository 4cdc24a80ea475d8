"""Which root filesystem a pod runs, where the runtime does not pull it itself.

A pod without an image runs the exchange's default image (the host's own Python and shell,
in the runtime's sandbox). A pod with an OCI reference carries it as its function's
``ImageSpec.registry``: the ``bwrap`` runtime pulls it (``agent/oci/``) and runs the pod
supervisor in it like a function's worker, with the image's ENTRYPOINT and CMD as the
command when the pod names none. :func:`resolve_pod_image` answers for runtimes that cannot
(``process``): the default image only.
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
        f"this host runs the `process` runtime, which cannot run the OCI image {ref!r}: "
        "pods with --image need a host on the bwrap runtime; create the pod without --image "
        "to run the exchange's default image"
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
