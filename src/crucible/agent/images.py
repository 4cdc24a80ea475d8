"""The host's image cache: each image built once with ``uv``, kept by content, evicted LRU.

Layout under ``root`` (``<agent_dir>/images``)::

    <build hash>/venv/           the image's Python environment (uv venv + uv pip install)
    <build hash>/python/         local Python sources (Image.add_local_python_source)
    <build hash>/files/<n>/      local directories (Image.add_local_dir), mounted at their path
    <build hash>/build.log       the installer's output
    <build hash>/ready.json      written last: size, build time; an image without it is not built
    .uv-cache/                   uv's download and wheel cache, shared by builds
    .tmp-*                       builds in progress (renamed into place when complete)

The build key is :meth:`ImageSpec.build_hash` (the steps only), so images that differ only in
environment variables or preloaded modules share a build. Every step runs with uv; pip is
never called. The image's environment sees, after its own packages, the agent's own
site-packages and Crucible (through a ``.pth`` file), so the worker runs in every image; an
image that pins an incompatible pydantic or orjson breaks its worker (docs/builders.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crucible.errors import ImageBuildError
from crucible.protocol.images import ImageSpec

__all__ = ["BuiltImage", "ImageCache", "find_uv", "host_python_paths"]

log = logging.getLogger(__name__)

_LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class BuiltImage:
    key: str
    root: Path
    python: Path
    # (host directory, path inside the container), mounted read-only.
    mounts: tuple[tuple[Path, str], ...]
    size_bytes: int
    build_s: float
    cached: bool  # True when this call found it built


def find_uv(configured: str = "") -> str:
    """The uv binary: the setting, the one the ``uv`` package ships, or one on PATH."""
    if configured:
        return configured
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv  # type: ignore[import-not-found,unused-ignore]

        return str(uv.find_uv_bin())
    found = shutil.which("uv")
    if found:
        return found
    raise ImageBuildError(
        "uv is not installed on this host; the agent builds images with it "
        "(pip install uv, or set CRUCIBLE_UV_BIN)"
    )


def host_python_paths() -> list[str]:
    """Where the agent's own packages and Crucible live: appended to every image's path."""
    paths: list[str] = []
    root = Path(__file__).resolve().parents[2]
    if root.name not in ("site-packages", "dist-packages"):
        paths.append(str(root))
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in paths:
            paths.append(p)
    return paths


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _unzip(data: bytes, target: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise ImageBuildError(f"an image blob holds an unsafe path {name!r}")
        zf.extractall(target)


class ImageCache:
    """Builds and keeps images. Thread-safe; a build of one key runs once at a time.

    ``max_bytes``: after each build, the least recently used images not in use are deleted
    until the cache fits (0: no limit). ``python``: the interpreter images are based on.
    """

    def __init__(
        self,
        root: Path,
        *,
        uv_bin: str = "",
        max_bytes: int = 0,
        python: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.uv_bin = uv_bin
        self.max_bytes = max_bytes
        self.python = python or sys.executable
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}

    # -- public API ---------------------------------------------------------------------------
    def ensure(
        self,
        spec: ImageSpec,
        fetch_blob: Callable[[str], bytes],
        on_line: Callable[[str], None] | None = None,
    ) -> BuiltImage:
        """The built image for ``spec``, building it first when this host has not.

        ``fetch_blob(sha)`` returns a blob's bytes (the agent reads them with the container's
        token, so an image can only ship its own account's files). ``on_line`` receives the
        installer's output line by line. Raises :class:`ImageBuildError` with the end of the
        installer's output when a step fails.
        """
        key = spec.build_hash()
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            built = self._load(key, cached=True)
            if built is None:
                built = self._build(key, spec, fetch_blob, on_line)
                self.evict(keep=key)
            with contextlib.suppress(OSError):
                os.utime(built.root / "ready.json")  # the LRU clock
            return built

    def acquire(self, key: str) -> None:
        """Mark an image in use (a zygote or container runs on it): never evicted meanwhile."""
        with self._lock:
            self._in_use[key] = self._in_use.get(key, 0) + 1

    def release(self, key: str) -> None:
        with self._lock:
            n = self._in_use.get(key, 0) - 1
            if n <= 0:
                self._in_use.pop(key, None)
            else:
                self._in_use[key] = n

    def images(self) -> list[tuple[str, int, float]]:
        """(key, size in bytes, last used as a Unix time) of every built image."""
        out = []
        for d in self.root.iterdir():
            ready = d / "ready.json"
            if d.name.startswith(".") or not ready.exists():
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads(ready.read_text())
                out.append((d.name, int(info["size_bytes"]), ready.stat().st_mtime))
        return out

    def evict(self, keep: str | None = None) -> list[str]:
        """Delete least recently used images, not in use, until the cache fits."""
        if self.max_bytes <= 0:
            return []
        images = sorted(self.images(), key=lambda t: t[2])
        total = sum(size for _, size, _ in images)
        evicted = []
        for key, size, _ in images:
            if total <= self.max_bytes:
                break
            with self._lock:
                busy = key in self._in_use or key == keep
            if busy:
                continue
            log.info("evicting image %s (%d MiB) from the cache", key[:12], size >> 20)
            trash = self.root / f".tmp-evict-{key}"
            with contextlib.suppress(OSError):
                os.rename(self.root / key, trash)
                shutil.rmtree(trash, ignore_errors=True)
                total -= size
                evicted.append(key)
        return evicted

    # -- internals ----------------------------------------------------------------------------
    def _load(self, key: str, *, cached: bool) -> BuiltImage | None:
        root = self.root / key
        try:
            info = json.loads((root / "ready.json").read_text())
        except (OSError, ValueError):
            return None
        return BuiltImage(
            key=key,
            root=root,
            python=root / "venv" / "bin" / "python",
            mounts=tuple((root / host, path) for host, path in info["mounts"]),
            size_bytes=int(info["size_bytes"]),
            build_s=float(info["build_s"]),
            cached=cached,
        )

    def _build(
        self,
        key: str,
        spec: ImageSpec,
        fetch_blob: Callable[[str], bytes],
        on_line: Callable[[str], None] | None,
    ) -> BuiltImage:
        started = time.perf_counter()
        final = self.root / key
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log_path = tmp / "build.log"
        log.info("building image %s (%d steps)", key[:12], len(spec.steps))
        try:
            uv = find_uv(self.uv_bin)
            with open(log_path, "a", encoding="utf-8") as logf:

                def emit(line: str) -> None:
                    logf.write(line + "\n")
                    logf.flush()
                    if on_line is not None:
                        on_line(line)

                venv = tmp / "venv"
                self._run([uv, "venv", "--python", self.python, str(venv)], emit, log_path)
                mounts: list[tuple[str, str]] = []
                (tmp / "python").mkdir()
                for i, step in enumerate(spec.steps):
                    if step.kind == "pip":
                        emit(f"$ uv pip install {' '.join(step.packages)}")
                        cmd = [uv, "pip", "install", "--python", str(venv / "bin" / "python")]
                        self._run([*cmd, "--", *step.packages], emit, log_path)
                    elif step.kind == "python":
                        assert step.blob is not None
                        _unzip(fetch_blob(step.blob), tmp / "python")
                    else:
                        assert step.blob is not None and step.path is not None
                        target = tmp / "files" / str(i)
                        target.mkdir(parents=True)
                        _unzip(fetch_blob(step.blob), target)
                        mounts.append((f"files/{i}", step.path))
            site = self._site_packages(venv)
            # After the image's own packages: its python sources, then the agent's packages
            # (the worker's dependencies) and Crucible itself.
            lines = [str(final / "python"), *host_python_paths()]
            (site / "_crucible_host.pth").write_text("\n".join(lines) + "\n")
            build_s = time.perf_counter() - started
            info = {"size_bytes": _dir_size(tmp), "build_s": build_s, "mounts": mounts}
            (tmp / "ready.json").write_text(json.dumps(info))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "ready.json").exists():
                    raise
        except ImageBuildError:
            raise
        except (OSError, zipfile.BadZipFile) as exc:
            raise ImageBuildError(f"building image {key[:12]} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("built image %s in %.1f s", key[:12], build_s)
        built = self._load(key, cached=False)
        assert built is not None
        return built

    def _run(self, cmd: list[str], emit: Callable[[str], None], log_path: Path) -> None:
        env = dict(os.environ)
        env["UV_CACHE_DIR"] = str(self.root / ".uv-cache")
        env["UV_NO_PROGRESS"] = "1"
        env.pop("VIRTUAL_ENV", None)
        tail: list[str] = []
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                line = line.rstrip("\n")
                emit(line)
                tail.append(line)
                del tail[:-40]
        rc = proc.wait()
        if rc != 0:
            text = "\n".join(tail)[-_LOG_TAIL_CHARS:]
            raise ImageBuildError(f"`{' '.join(cmd[1:3])}` failed with status {rc}:\n{text}")

    @staticmethod
    def _site_packages(venv: Path) -> Path:
        found = sorted(venv.glob("lib/python*/site-packages"))
        if not found:
            raise ImageBuildError(f"the image's environment at {venv} has no site-packages")
        return found[0]
