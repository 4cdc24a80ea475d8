"""Code shipping: a function's module, the local package it belongs to, and the other local
modules it imported, as one deterministic zip identified by its sha256.

Modules under site-packages or the standard library are not shipped: the container's
environment provides them (the images issue adds declared packages).
"""

from __future__ import annotations

import hashlib
import io
import sys
import sysconfig
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

from crucible.errors import InvalidRequestError
from crucible.sdk._serialization import note_main_module

__all__ = ["CodeBundle", "bundle_for_module", "module_name_for"]

_MAX_BUNDLE_BYTES = 256 * 1024 * 1024
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache", ".ruff_cache"}


@dataclass(frozen=True)
class CodeBundle:
    data: bytes
    sha256: str
    module: str  # the name the worker imports
    files: tuple[str, ...]


def _system_roots() -> list[Path]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(Path(path).resolve())
    for p in sys.path:
        if "site-packages" in p or "dist-packages" in p:
            roots.add(Path(p).resolve())
    return sorted(roots)


def _is_system(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(r) for r in roots)


def _package_root(file: Path) -> tuple[Path, list[str]]:
    """The directory to put on sys.path, and the package parts above the module."""
    parts: list[str] = []
    directory = file.parent
    while (directory / "__init__.py").exists():
        parts.insert(0, directory.name)
        directory = directory.parent
    return directory, parts


def module_name_for(module: types.ModuleType) -> tuple[str, Path, Path]:
    """(importable name, file, sys.path root) of a module, ``__main__`` resolved to its file."""
    file_attr = getattr(module, "__file__", None)
    if not file_attr:
        raise InvalidRequestError(
            f"module {module.__name__!r} has no source file, so its functions cannot be shipped; "
            "define functions in a .py file"
        )
    file = Path(file_attr).resolve()
    root, parts = _package_root(file)
    name = module.__name__
    if name == "__main__" or name.startswith("__"):
        name = ".".join([*parts, file.stem])
        if module.__name__ == "__main__":
            note_main_module(name)  # what comes back named so is the script's own
    return name, file, root


def _local_module_files(root: Path, roots: list[Path]) -> set[Path]:
    files: set[Path] = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if not f or not f.endswith(".py"):
            continue
        path = Path(f).resolve()
        if path.is_relative_to(root) and not _is_system(path, roots):
            files.add(path)
    return files


def bundle_for_module(module: types.ModuleType) -> CodeBundle:
    name, file, root = module_name_for(module)
    roots = _system_roots()
    files = {file} | _local_module_files(root, roots)
    # The whole top-level package the module lives in, so its relative imports work.
    top = name.split(".")[0]
    if (root / top).is_dir():
        for path in (root / top).rglob("*"):
            if path.is_file() and not (set(path.relative_to(root).parts) & _SKIP_DIRS):
                files.add(path.resolve())
    entries = sorted((str(p.relative_to(root)), p) for p in files if p.is_relative_to(root))
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, path in entries:
            data = path.read_bytes()
            total += len(data)
            if total > _MAX_BUNDLE_BYTES:
                raise InvalidRequestError(
                    f"the code next to {file} is over {_MAX_BUNDLE_BYTES >> 20} MiB; move data "
                    "files out of the package"
                )
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    data = buf.getvalue()
    return CodeBundle(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        module=name,
        files=tuple(a for a, _ in entries),
    )
