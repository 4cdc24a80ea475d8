"""An OCI image made ready for a function's sandbox: the image, its Python, the worker's
dependency directories, the user to run as.

:func:`prepare_function_image` is what the ``bwrap`` runtime calls (in a build thread) for a
container whose image came from ``Image.from_registry``: it pulls through :class:`OciImages`,
checks the image's Python (>= 3.11, else ``image_unsupported`` saying so), finds the worker's
dependencies for that Python version, and resolves the image's ``USER`` against its own
``/etc/passwd`` and ``/etc/group``. A pod's image needs no Python: its supervisor runs with
the agent's own interpreter (``python`` None; :mod:`crucible.agent.python_bundle`) and the
agent's own site-packages.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crucible.agent.images import host_python_paths
from crucible.agent.oci.cache import OciImages, PreparedImage
from crucible.agent.oci.python import ImagePython, WorkerDeps, require_python
from crucible.agent.oci.registry import RegistryAuth
from crucible.errors import ImageUnsupportedError

__all__ = ["FunctionImage", "prepare_function_image", "resolve_user"]

LIB_ROOT = "/crucible/lib"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class FunctionImage:
    image: PreparedImage
    python: ImagePython | None  # None: the agent's own (a pod; agent/python_bundle.py)
    lib_dirs: list[str]  # host directories, bound read-only at /crucible/lib/<i>
    uid: int
    gid: int

    @property
    def lib_mounts(self) -> list[tuple[Path, str]]:
        return [(Path(d), f"{LIB_ROOT}/{i}") for i, d in enumerate(self.lib_dirs)]

    @property
    def env(self) -> dict[str, str]:
        """The image's ENV (with a PATH)."""
        return {"PATH": DEFAULT_PATH, **self.image.env}


def prepare_function_image(
    oci: OciImages,
    deps: WorkerDeps,
    ref: str,
    auth: RegistryAuth | None,
    emit: Callable[[str], None] | None = None,
    *,
    pod: bool = False,
) -> FunctionImage:
    """``pod``: for a pod, whose image may hold no Python (nor a libc)."""
    image = oci.prepare(ref, auth, emit)
    if pod:
        uid, gid = resolve_user(image.rootfs, image.user, ref)
        paths = host_python_paths()
        return FunctionImage(image=image, python=None, lib_dirs=paths, uid=uid, gid=gid)
    python = require_python(image.rootfs, ref)
    uid, gid = resolve_user(image.rootfs, image.user, ref)
    return FunctionImage(
        image=image, python=python, lib_dirs=deps.paths_for(python), uid=uid, gid=gid
    )


def _read_table(rootfs: Path, name: str) -> list[list[str]]:
    """Rows of the image's ``/etc/passwd`` or ``/etc/group`` (a regular file only: a link
    could point at the host's)."""
    path = rootfs / "etc" / name
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return []
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(rootfs: Path, user: str, ref: str = "the image") -> tuple[int, int]:
    """(uid, gid) for an image's ``USER`` (``""`` is root, as with ``docker run``):
    ``1234``, ``1234:5678``, ``name`` or ``name:group``, names looked up in the image."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    uid: int | None = None
    gid: int | None = None
    if name.isdigit():
        uid = int(name)
    for row in _read_table(rootfs, "passwd"):
        if len(row) >= 4 and (row[0] == name or (uid is not None and row[2] == str(uid))):
            if uid is None and row[2].isdigit():
                uid = int(row[2])
            if row[3].isdigit():
                gid = int(row[3])
            break
    if uid is None:
        raise ImageUnsupportedError(
            f"{ref}: USER {user!r} is not in the image's /etc/passwd; use a numeric uid"
        )
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = next(
                (
                    int(r[2])
                    for r in _read_table(rootfs, "group")
                    if len(r) >= 3 and r[0] == group and r[2].isdigit()
                ),
                None,
            )
            if gid is None:
                raise ImageUnsupportedError(
                    f"{ref}: the group {group!r} of USER {user!r} is not in the image's "
                    "/etc/group; use a numeric gid"
                )
    if uid > 0xFFFFFFFE or (gid is not None and gid > 0xFFFFFFFE):
        raise ImageUnsupportedError(f"{ref}: USER {user!r} is out of range")
    return uid, uid if gid is None else gid
