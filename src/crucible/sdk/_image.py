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

Or start from any OCI image in a registry (Docker Hub, GHCR, a private registry)::

    image = crucible.Image.from_registry("python:3.12-slim")
    private = crucible.Image.from_registry(
        "registry.example.com/team/app:1.4", secret=crucible.Secret.from_name("regcreds")
    )

The agent pulls it (verifying every blob), runs it as the container's root file system with
its ENV, WORKDIR and USER, and injects Crucible's worker: the image needs Python >= 3.11.

The agent builds an image once per host, with ``uv``, and reuses it for every container of
every function and account that asks for the same content. Local files travel as zip blobs
uploaded when the app starts; their hashes are part of the image's identity.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from crucible.errors import InvalidRequestError
from crucible.protocol.images import BuildStep, ImageSpec
from crucible.sdk._checks import from_validation_error
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


_PLACEHOLDER = "0" * 64
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Image:
    """An image spec. ``Image()`` is the host's own Python with Crucible (nothing added).

    Local files are read only when the image is needed on the builder's side (``spec()``,
    when the app starts), never when the module defining it is imported, so the same module
    imports cleanly inside a container where those files do not exist.
    """

    # (kind, requirements, local source: a directory or a module name, remote path)
    _steps: tuple[tuple[str, tuple[str, ...], str | None, str | None], ...] = ()
    _env: tuple[tuple[str, str], ...] = ()
    _preload: tuple[str, ...] = ()
    _zips: dict[str, tuple[str, bytes]] = field(default_factory=dict, compare=False, repr=False)
    _registry: str | None = None
    _registry_secret: str | None = None

    @classmethod
    def from_registry(cls, ref: str, *, secret: Any = None) -> Image:
        """An OCI image from a registry: ``"python:3.12-slim"`` (Docker Hub),
        ``"ghcr.io/org/app:tag"``, or pinned ``"...@sha256:..."``. ``secret``: a
        ``crucible.Secret.from_name(NAME)`` whose secret holds ``REGISTRY_USERNAME`` and
        ``REGISTRY_PASSWORD`` for a private registry. The image must hold Python >= 3.11 for
        functions (the worker runs with it). ``.env()`` and ``.preload()`` apply on top."""
        from crucible.sdk._secrets import Secret

        if not isinstance(ref, str):
            raise InvalidRequestError(
                f"Image.from_registry(): ref must be a string such as 'python:3.12-slim', "
                f"got {type(ref).__name__}"
            )
        secret_name: str | None = None
        if secret is not None:
            if not isinstance(secret, Secret) or secret.name is None:
                raise InvalidRequestError(
                    "Image.from_registry(): secret must be crucible.Secret.from_name(NAME), a "
                    "secret of your account holding REGISTRY_USERNAME and REGISTRY_PASSWORD "
                    "(create it with `crucible secret create NAME REGISTRY_USERNAME=... "
                    "REGISTRY_PASSWORD=...`)"
                )
            secret_name = secret.name
        image = cls(_registry=ref, _registry_secret=secret_name)
        return cls._check(image, "from_registry")

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        """Modal's usual first step, for ported code: without ``python_version``, the host's
        own Python (``Image()``); with one (``"3.12"``), the registry image
        ``python:<version>-slim`` (Debian slim with that Python, pulled by the host's agent;
        functions need Python >= 3.11)."""
        if python_version is None:
            return cls()
        if not isinstance(python_version, str) or not re.fullmatch(r"3\.\d{1,2}", python_version):
            raise InvalidRequestError(
                f"Image.debian_slim(): python_version must look like '3.12', got {python_version!r}"
            )
        return cls.from_registry(f"python:{python_version}-slim")

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
        if not isinstance(local_path, str | Path) or not str(local_path).strip():
            raise InvalidRequestError(
                f"Image.add_local_dir(): local_path must be a path (str or pathlib.Path), "
                f"got {local_path!r}"
            )
        if not isinstance(remote_path, str) or not remote_path.startswith("/"):
            raise InvalidRequestError(
                f"Image.add_local_dir(): remote_path must be an absolute path such as "
                f"'/assets', got {remote_path!r}"
            )
        step = ("files", (), str(Path(local_path).absolute()), remote_path)
        return self._check(replace(self, _steps=(*self._steps, step)), "add_local_dir")

    def add_local_python_source(self, *modules: str) -> Image:
        """Ship local Python packages or modules (by import name) onto the image's path."""
        if not modules:
            raise InvalidRequestError(
                "Image.add_local_python_source() takes one or more module names"
            )
        for name in modules:
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                raise InvalidRequestError(
                    f"Image.add_local_python_source(): {name!r} is not a module name "
                    "(dotted Python identifiers, e.g. 'mypkg.models')"
                )
        steps = tuple(("python", (), name, None) for name in modules)
        return self._check(replace(self, _steps=self._steps + steps), "add_local_python_source")

    def env(self, variables: dict[str, str]) -> Image:
        """Environment variables set in every container of the image."""
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise InvalidRequestError(
                f"Image.env() takes a dict of strings to strings, got {variables!r}"[:200]
            )
        merged = dict(self._env) | variables
        return self._check(replace(self, _env=tuple(sorted(merged.items()))), "env")

    def preload(self, *modules: str) -> Image:
        """Modules the image's zygote imports before it forks containers, so each container
        starts with them loaded (``.preload("torch")``). They must not initialise CUDA at
        import time."""
        for name in modules:
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                raise InvalidRequestError(
                    f"Image.preload(): {name!r} is not a module name (e.g. 'torch')"
                )
        return self._check(replace(self, _preload=self._preload + tuple(modules)), "preload")

    # -- identity -----------------------------------------------------------------------------
    def spec(self) -> ImageSpec:
        """The wire form; its ``id`` is the hash of the content (local files included, so
        this reads them)."""
        return self._spec(read_files=True)

    @property
    def id(self) -> str:
        return self.spec().id

    def blobs(self) -> dict[str, bytes]:
        """The zip blobs the image ships, by sha256 (uploaded when the app starts)."""
        self.spec()
        return dict(self._zips.values())

    # -- internals ----------------------------------------------------------------------------
    def _spec(self, *, read_files: bool) -> ImageSpec:
        try:
            steps = [
                BuildStep(
                    kind=kind,  # type: ignore[arg-type]
                    packages=list(pkgs),
                    blob=None if source is None else self._blob(kind, source, read_files),
                    path=remote,
                )
                for kind, pkgs, source, remote in self._steps
            ]
            return ImageSpec(
                steps=steps,
                env=dict(self._env),
                preload=list(self._preload),
                registry=self._registry,
                registry_secret=self._registry_secret,
            )
        except ValidationError as exc:
            raise from_validation_error(exc, "the image") from None

    def _blob(self, kind: str, source: str, read_files: bool) -> str:
        return self._zip(kind, source)[0] if read_files else _PLACEHOLDER

    def _zip(self, kind: str, source: str) -> tuple[str, bytes]:
        key = f"{kind}:{source}"
        if key not in self._zips:
            data = zip_tree(Path(source)) if kind == "files" else _zip_module(source)
            self._zips[key] = (hashlib.sha256(data).hexdigest(), data)
        return self._zips[key]

    def _pip(self, packages: tuple[str | list[str], ...]) -> Image:
        flat: list[Any] = []
        for p in packages:
            flat.extend([p] if isinstance(p, str) or not isinstance(p, list | tuple) else p)
        bad = [p for p in flat if not isinstance(p, str) or not p.strip()]
        if not flat or bad:
            got = f", got {bad[0]!r}" if bad else ""
            raise InvalidRequestError(
                f"Image.pip_install() takes one or more requirement strings such as "
                f"'numpy==2.1.0'{got}"
            )
        step = ("pip", tuple(p.strip() for p in flat), None, None)
        return self._check(replace(self, _steps=(*self._steps, step)), "pip_install")

    @staticmethod
    def _check(image: Image, method: str) -> Image:
        try:
            image._spec(read_files=False)  # a bad name, path or requirement fails here
        except InvalidRequestError as exc:
            detail = exc.message.removeprefix("the image: ")
            raise InvalidRequestError(f"Image.{method}(): {detail}") from None
        return image


def _zip_module(name: str) -> bytes:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise InvalidRequestError(f"cannot import {name!r} to ship it: {exc}") from exc
    _, file, root = module_name_for(module)
    top = name.split(".")[0]
    if (root / top).is_dir():
        return zip_tree(root / top, prefix=f"{top}/")
    return _zip_file(file)


def _zip_file(file: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(file.name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, file.read_bytes())
    return buf.getvalue()
