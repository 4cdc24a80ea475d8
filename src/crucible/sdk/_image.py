"""``crucible.Image``: the environment a function's containers run in.

An image is immutable: each method returns a new image with one more step, so images can be
shared and extended::

    image = (
        crucible.Image()
        .uv_pip_install("numpy==2.1.0")
        .add_local_dir("./assets", "/assets")
        .env({"MODEL": "small"})
        .preload("numpy")
    )

    @app.function(image=image)
    def f(): ...

The agent builds an image once per host, with ``uv``, and reuses it for every container of
every function and account that asks for the same content. Local files travel as zip blobs
uploaded when the app starts; their hashes are part of the image's identity.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import ValidationError

from crucible.errors import InvalidRequestError
from crucible.protocol.images import BuildStep, ImageSpec
from crucible.sdk._packaging import module_name_for

__all__ = ["Image", "zip_tree"]

_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache"}
_MAX_FILES_BYTES = 1024 * 1024 * 1024


def zip_tree(root: Path, prefix: str = "") -> bytes:
    """A deterministic zip of the files under ``root`` (names under ``prefix``)."""
    if not root.is_dir():
        raise InvalidRequestError(f"{root} is not a directory")
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if not path.is_file() or set(rel.parts) & _SKIP_DIRS:
                continue
            data = path.read_bytes()
            total += len(data)
            if total > _MAX_FILES_BYTES:
                raise InvalidRequestError(f"{root} holds over 1 GiB; ship data another way")
            info = zipfile.ZipInfo(f"{prefix}{rel.as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


@dataclass(frozen=True)
class _Files:
    data: bytes
    sha256: str


@dataclass(frozen=True)
class Image:
    """An image spec. ``Image()`` is the host's own Python with Crucible (nothing added)."""

    _steps: tuple[tuple[str, tuple[str, ...], str | None], ...] = ()
    _env: tuple[tuple[str, str], ...] = ()
    _preload: tuple[str, ...] = ()
    _files: dict[str, _Files] = field(default_factory=dict, compare=False, repr=False)

    # -- steps --------------------------------------------------------------------------------
    def pip_install(self, *packages: str | list[str]) -> Image:
        """Install requirement strings (``"numpy==2.1.0"``) into the image. The agent uses
        ``uv pip install`` for both this and :meth:`uv_pip_install`."""
        return self._pip(packages)

    def uv_pip_install(self, *packages: str | list[str]) -> Image:
        """Install requirement strings with ``uv``."""
        return self._pip(packages)

    def add_local_dir(self, local_path: str | Path, remote_path: str) -> Image:
        """Ship a local directory; containers see it read-only at ``remote_path``."""
        if not isinstance(remote_path, str) or not remote_path.startswith("/"):
            raise InvalidRequestError(f"remote_path={remote_path!r} must be an absolute path")
        return self._add_blob("files", zip_tree(Path(local_path).resolve()), remote_path)

    def add_local_python_source(self, *modules: str) -> Image:
        """Ship local Python packages or modules (by import name) onto the image's path."""
        image = self
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise InvalidRequestError(f"cannot import {name!r} to ship it: {exc}") from exc
            _, file, root = module_name_for(module)
            top = name.split(".")[0]
            if (root / top).is_dir():
                data = zip_tree(root / top, prefix=f"{top}/")
            else:
                data = _zip_file(file)
            image = image._add_blob("python", data, None)
        return image

    def env(self, variables: dict[str, str]) -> Image:
        """Environment variables set in every container of the image."""
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise InvalidRequestError("Image.env() takes a dict of strings")
        merged = dict(self._env) | variables
        return self._check(replace(self, _env=tuple(sorted(merged.items()))))

    def preload(self, *modules: str) -> Image:
        """Modules the image's zygote imports before it forks containers, so each container
        starts with them loaded (``.preload("torch")``). They must not initialise CUDA at
        import time."""
        return self._check(replace(self, _preload=self._preload + tuple(modules)))

    # -- identity -----------------------------------------------------------------------------
    def spec(self) -> ImageSpec:
        """The wire form; its ``id`` is the hash of the content."""
        try:
            return ImageSpec(
                steps=[
                    BuildStep(
                        kind=kind,  # type: ignore[arg-type]
                        packages=list(pkgs),
                        blob=blob.split(":", 1)[0] if blob else None,
                        path=_path_of(kind, blob),
                    )
                    for kind, pkgs, blob in self._steps
                ],
                env=dict(self._env),
                preload=list(self._preload),
            )
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid image: {exc.errors()[0]['msg']}") from None

    @property
    def id(self) -> str:
        return self.spec().id

    def blobs(self) -> dict[str, bytes]:
        """The zip blobs the image ships, by sha256 (uploaded when the app starts)."""
        return {f.sha256: f.data for f in self._files.values()}

    # -- internals ----------------------------------------------------------------------------
    def _pip(self, packages: tuple[str | list[str], ...]) -> Image:
        flat: list[str] = []
        for p in packages:
            flat.extend([p] if isinstance(p, str) else list(p))
        if not flat or not all(isinstance(p, str) and p.strip() for p in flat):
            raise InvalidRequestError("pip_install() takes one or more requirement strings")
        step = ("pip", tuple(p.strip() for p in flat), None)
        return self._check(replace(self, _steps=(*self._steps, step)))

    def _add_blob(self, kind: str, data: bytes, remote_path: str | None) -> Image:
        sha = hashlib.sha256(data).hexdigest()
        # The path rides in the blob slot's key so a step is fully described by the tuple.
        key = f"{sha}:{remote_path or ''}"
        files = dict(self._files)
        files[key] = _Files(data, sha)
        step = (kind, (), key)
        return self._check(replace(self, _steps=(*self._steps, step), _files=files))

    @staticmethod
    def _check(image: Image) -> Image:
        image.spec()  # raises InvalidRequestError for a bad name, path or requirement
        return image


def _path_of(kind: str, key: str | None) -> str | None:
    if kind != "files" or key is None:
        return None
    return key.split(":", 1)[1]


def _zip_file(file: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(file.name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, file.read_bytes())
    return buf.getvalue()
