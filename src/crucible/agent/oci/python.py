"""The Python inside an OCI image, and the worker's dependencies built for it.

A function's container runs Crucible's worker with the image's own interpreter, so the image
needs Python >= 3.11 (:func:`find_python` looks for ``python3.X`` in the usual ``bin``
directories, following links inside the image only). The worker's pure-Python code (the
``crucible`` package) works on any such Python, but its compiled dependencies (pydantic_core,
orjson, ...) are built for one minor version. So:

- when the image's minor version is the agent's own, the sandbox gets the agent's own
  site-packages, read-only;
- otherwise :class:`WorkerDeps` installs Crucible's runtime dependencies for that version
  once, with ``uv pip install --target ... --python-version 3.X``, into
  ``<cache>/worker-deps/3.X`` (renamed into place when complete), and every image with that
  Python shares it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from crucible.agent.images import find_uv, host_python_paths
from crucible.errors import ImageBuildError, ImageUnsupportedError

__all__ = ["MIN_PYTHON", "ImagePython", "WorkerDeps", "find_python", "resolve_in_rootfs"]

MIN_PYTHON = (3, 11)
_BIN_DIRS = ("usr/local/bin", "usr/bin", "bin", "opt/conda/bin", "usr/local/sbin")
_NAME = re.compile(r"^python(3)\.(\d+)$")
_MAX_LINKS = 16


@dataclass(frozen=True)
class ImagePython:
    path: str  # inside the image, e.g. /usr/local/bin/python3.12
    version: tuple[int, int]

    @property
    def tag(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def resolve_in_rootfs(rootfs: Path, inside: str) -> str | None:
    """Follow symlinks of ``inside`` within ``rootfs`` (never outside it); the final path
    inside the image of a regular file, else None."""
    path = PurePosixPath(inside)
    for _ in range(_MAX_LINKS):
        host = rootfs.joinpath(*path.parts[1:])
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISREG(st.st_mode):
            return str(path)
        if not stat.S_ISLNK(st.st_mode):
            return None
        target = os.readlink(host)
        joined = PurePosixPath(target) if target.startswith("/") else path.parent / target
        parts: list[str] = []
        for p in joined.parts[1:]:
            if p == "..":
                if parts:
                    parts.pop()
            elif p not in ("", "."):
                parts.append(p)
        path = PurePosixPath("/", *parts)
    return None


def find_python(rootfs: Path) -> ImagePython | None:
    """The newest ``python3.X`` in the image's bin directories, or None."""
    best: ImagePython | None = None
    for d in _BIN_DIRS:
        host_dir = rootfs / d
        try:
            names = os.listdir(host_dir)
        except OSError:
            continue
        for name in names:
            m = _NAME.match(name)
            if not m:
                continue
            resolved = resolve_in_rootfs(rootfs, f"/{d}/{name}")
            if resolved is None:
                continue
            version = (int(m.group(1)), int(m.group(2)))
            if best is None or version > best.version:
                best = ImagePython(path=f"/{d}/{name}", version=version)
    return best


def require_python(rootfs: Path, ref: str) -> ImagePython:
    """The image's Python, or :class:`ImageUnsupportedError` saying what a function needs."""
    found = find_python(rootfs)
    need = f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}"
    if found is None:
        raise ImageUnsupportedError(
            f"image {ref} has no Python (no python3.X in /usr/local/bin, /usr/bin or /bin): "
            f"functions need Python >= {need} in the image to run Crucible's worker; use an "
            "image such as python:3.12-slim, or install Python in yours"
        )
    if found.version < MIN_PYTHON:
        raise ImageUnsupportedError(
            f"image {ref} has Python {found.tag} ({found.path}): functions need Python >= "
            f"{need} in the image to run Crucible's worker; use a newer base image"
        )
    return found


def _requirements() -> list[str]:
    """Crucible's runtime dependencies, as installed requirement strings (pinned to the
    versions the agent runs, so worker and agent speak the same protocol)."""
    out: list[str] = []
    try:
        reqs = importlib.metadata.requires("crucible") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    for req in reqs:
        if "extra ==" in req:
            continue
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(req.split(";")[0].strip())
    return out


class WorkerDeps:
    """The directories holding the worker's dependencies for each Python minor version."""

    def __init__(self, root: Path, *, uv_bin: str = "") -> None:
        self.root = Path(root)
        self.uv_bin = uv_bin
        self._lock = threading.Lock()

    def paths_for(self, python: ImagePython) -> list[str]:
        """Host directories to put on the image Python's path (after its own packages)."""
        if python.version == sys.version_info[:2]:
            return host_python_paths()
        crucible_root = Path(__file__).resolve().parents[3]
        return [str(crucible_root), str(self._built(python.tag))]

    def _built(self, tag: str) -> Path:
        final = self.root / tag
        with self._lock:
            if (final / ".complete").exists():
                return final
            tmp = self.root / f".tmp-{tag}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            reqs = [r for r in _requirements() if not r.startswith(("uv", "matplotlib"))]
            cmd = [
                find_uv(self.uv_bin),
                "pip",
                "install",
                "--target",
                str(tmp),
                "--python-version",
                tag,
                "--python-platform",
                "x86_64-manylinux_2_28"
                if os.uname().machine == "x86_64"
                else "aarch64-manylinux_2_28",
                "--only-binary",
                ":all:",
                "--",
                *reqs,
            ]
            env = dict(os.environ)
            env["UV_CACHE_DIR"] = str(self.root / ".uv-cache")
            env.pop("VIRTUAL_ENV", None)
            result = subprocess.run(
                cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False
            )
            if result.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ImageBuildError(
                    f"installing the worker's dependencies for Python {tag} failed:\n"
                    + (result.stderr or result.stdout)[-3000:]
                )
            (tmp / ".complete").write_text("\n".join(reqs) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            return final
