"""Host programs copied into a folder that a sandbox on an OCI image sees read-only.

An OCI image sees none of the host, and may hold another libc or none at all. A program the
agent brings into it (its SSH server, its Python) is copied once per agent, with every shared
library it needs (the host's ``ldd``) and the host's dynamic loader, into
``<root>/<hash>``: the hash covers each file's name, real path, size and modification time,
so an upgraded host package makes a new folder. The programs run through the bundled loader
with ``--library-path`` (``run_prefix``), so no ``LD_LIBRARY_PATH`` is ever set and the
image's own programs, started from them, load with the image's own libc.

Users: :mod:`crucible.agent.ssh_bundle` (dropbear) and :mod:`crucible.agent.python_bundle`
(the pod supervisor's interpreter).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["build_bundle", "find_file", "ldd", "ldd_closure", "run_prefix"]

_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def find_file(candidates: Iterable[str]) -> str | None:
    """The first readable path among ``candidates`` (glob patterns)."""
    for pattern in candidates:
        for path in sorted(glob.glob(pattern)):
            if os.access(path, os.R_OK):
                return path
    return None


def ldd(*paths: str) -> tuple[str | None, list[str]]:
    """(the dynamic loader, the shared libraries) ``paths`` need, from the host's ``ldd``."""
    out = subprocess.run(
        ["ldd", "--", *paths], capture_output=True, text=True, check=False, timeout=120
    ).stdout
    loader, libs = None, []
    for line in out.splitlines():
        m = _LDD_LINE.match(line)
        if m is None:
            continue
        if m.group(1) is None:
            loader = m.group(2)
        else:
            libs.append(m.group(2))
    return loader, libs


def ldd_closure(paths: Iterable[str], libs: dict[str, str]) -> str | None:
    """Add to ``libs`` (file name → host path) every library ``paths`` need; the loader.
    One ``ldd`` per hundred paths (a Python's extension modules are hundreds of files)."""
    loader: str | None = None
    todo = list(paths)
    for i in range(0, len(todo), 100):
        found, needed = ldd(*todo[i : i + 100])
        loader = loader or found
        for lib in needed:
            libs.setdefault(os.path.basename(lib), lib)
    return loader


def run_prefix(inside: str, libs: str = "lib") -> list[str]:
    """The command line that starts a bundled program mounted at ``inside``: its loader."""
    return [f"{inside}/ld.so", "--inhibit-cache", "--library-path", f"{inside}/{libs}"]


def build_bundle(
    root: Path,
    files: dict[str, str],
    *,
    texts: dict[str, str] | None = None,
    dirs: Iterable[str] = (),
) -> Path:
    """The folder under ``root`` holding ``files`` (name inside → host path, copied with mode
    0755), ``texts`` (name → content, mode 0644) and empty ``dirs`` (mount points): made once
    (renamed into place when complete), reused while every file is unchanged."""
    texts = texts or {}
    digest = hashlib.sha256()
    for name, text in sorted(texts.items()):
        digest.update(f"{name}\0{text}\0".encode())
    for d in sorted(dirs):
        digest.update(f"dir\0{d}\n".encode())
    for name, path in sorted(files.items()):
        st = os.stat(path)
        digest.update(
            f"{name}\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    dest = root / digest.hexdigest()[:16]
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    made = {tmp}
    folders = [(tmp / name).parent for name in [*files, *texts]] + [tmp / d for d in dirs]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        while folder != tmp and folder not in made:
            made.add(folder)
            folder = folder.parent
    for name, path in files.items():
        shutil.copyfile(path, tmp / name)
        (tmp / name).chmod(0o755)
    for name, text in texts.items():
        (tmp / name).write_text(text, encoding="utf-8")
        (tmp / name).chmod(0o644)
    for folder in made:
        folder.chmod(0o755)
    try:
        os.rename(tmp, dest)
    except OSError:  # built meanwhile by another agent sharing the directory
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
