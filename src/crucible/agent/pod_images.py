"""Which root filesystem a pod runs, where the runtime does not pull it itself.

A pod without an image runs the exchange's default image (the host's own Python and shell,
in the runtime's sandbox). A pod with an OCI reference carries it as its function's
``ImageSpec.registry``: the ``bwrap`` runtime pulls it (``agent/oci/``) and runs the pod
supervisor in it like a function's worker, with the image's ENTRYPOINT and CMD as the
command when the pod names none. :func:`resolve_pod_image` answers for runtimes that cannot
(``process``): the default image only.
"""

from __future__ import annotations

from pathlib import Path

from crucible.errors import ImageBuildError

__all__ = ["POD_DISK_PATH", "pod_disk_dir", "resolve_pod_image"]


# Where a sandboxed pod sees its disk (the process runtime uses the host path itself).
POD_DISK_PATH = "/pod"


def resolve_pod_image(ref: str | None) -> None:
    """Check that a runtime that pulls no images can run the pod: only the default image.
    Raises :class:`ImageBuildError` (the message names what to do) for an OCI ``ref``."""
    if ref is None:
        return
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
