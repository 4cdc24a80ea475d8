"""Unpacking OCI layers safely, and assembling an image's root file system from them.

A layer (a tar, gzip-compressed or not) is unpacked into a directory of its own, with its
whiteouts recorded beside it rather than created as files:

- ``DIR/.wh.NAME`` deletes ``DIR/NAME`` of the layers below;
- ``DIR/.wh..wh..opq`` (opaque) hides everything the layers below put in ``DIR``.

Refused, so that a hostile image cannot touch the host: member names with ``..``, links whose
path leaves the layer, writing through a symlink (a layer that makes ``etc`` a link to
``/host/etc`` and then writes ``etc/passwd``), hard links to paths outside the layer. Device
nodes and FIFOs are skipped; setuid/setgid bits are dropped; owners are ignored (files belong
to the agent, and everything is made readable by the sandbox's user: the image is read-only
anyway). Absolute member names are taken relative to the layer's root, as ``docker`` does.

:func:`assemble_rootfs` applies layers in order into a fresh directory, hard-linking files
from the layer store, so images that share layers share their bytes on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from crucible.errors import ImageTooLargeError, ImageUnsupportedError

__all__ = ["LayerInfo", "assemble_rootfs", "safe_parts", "unpack_layer"]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MODE_MASK = 0o1777  # permissions and sticky; never setuid/setgid


@dataclass
class LayerInfo:
    """What an unpacked layer holds beside its tree: whiteouts, opaque dirs, its size."""

    whiteouts: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    size_bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> LayerInfo:
        return cls(**json.loads(text))


def safe_parts(name: str, what: str) -> tuple[str, ...]:
    """The path components of a member name, relative to the layer's root. ``..`` anywhere is
    refused; ``.`` and empty components are dropped; a leading ``/`` is ignored."""
    parts = tuple(p for p in PurePosixPath("/" + name).parts[1:] if p not in ("", "."))
    if ".." in parts or any("\x00" in p for p in parts):
        raise ImageUnsupportedError(f"{what} holds an unsafe path {name[:200]!r} ('..')")
    return parts


def _ensure_dirs(root: Path, parts: tuple[str, ...], what: str) -> Path:
    """Create (or check) the parent directories of ``parts`` under ``root`` without following
    a symlink anywhere; returns the parent directory's path."""
    cur = root
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ImageUnsupportedError(
                f"{what} writes through the symlink /{'/'.join(parts)} (refused: a layer may "
                "not write through a link)"
            )
        if not stat.S_ISDIR(st.st_mode):  # a file below becomes a directory above
            os.unlink(cur)
            os.mkdir(cur, 0o755)
    return cur


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _readable(mode: int, is_dir: bool) -> int:
    mode &= _MODE_MASK
    mode |= 0o444 | 0o200
    if is_dir or mode & 0o100:
        mode |= 0o111
    return mode


def unpack_layer(
    tar_path: Path, target: Path, what: str, *, max_bytes: int | None = None
) -> LayerInfo:
    """Unpack the layer at ``tar_path`` into ``target`` (an empty directory). Raises
    :class:`ImageUnsupportedError` for an unreadable archive or an unsafe member, and
    :class:`ImageTooLargeError` when its files add up to more than ``max_bytes`` (a gzip
    bomb stops there)."""
    info = LayerInfo()
    seen_dirs: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        tf = tarfile.open(tar_path, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise ImageUnsupportedError(
            f"{what} is not a tar archive (gzip or uncompressed): {exc}"
        ) from None
    try:
        with tf:
            for m in tf:
                parts = safe_parts(m.name, what)
                if not parts:
                    continue
                base = parts[-1]
                rel = "/".join(parts)
                if base == OPAQUE:
                    info.opaque.append("/".join(parts[:-1]))
                    continue
                if base.startswith(WHITEOUT):
                    info.whiteouts.append("/".join((*parts[:-1], base[len(WHITEOUT) :])))
                    continue
                parent = _ensure_dirs(target, parts, what)
                dest = parent / base
                if m.isdir():
                    try:
                        st = os.lstat(dest)
                        if not stat.S_ISDIR(st.st_mode):
                            os.unlink(dest)
                            os.mkdir(dest, 0o755)
                    except FileNotFoundError:
                        os.mkdir(dest, 0o755)
                    seen_dirs.append((dest, m))
                    continue
                _remove(dest)
                if m.isreg():
                    if max_bytes is not None and info.size_bytes + m.size > max_bytes:
                        raise ImageTooLargeError(
                            f"{what} unpacks to more than {max_bytes >> 20} MiB, this host's "
                            "limit for an unpacked image (4 x CRUCIBLE_OCI_IMAGE_MAX_MIB)"
                        )
                    src = tf.extractfile(m)
                    assert src is not None
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out, src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.chmod(dest, _readable(m.mode, False))
                    with contextlib.suppress(OSError):
                        os.utime(dest, (m.mtime, m.mtime))
                    info.size_bytes += m.size
                elif m.issym():
                    os.symlink(m.linkname, dest)
                elif m.islnk():
                    link_parts = safe_parts(m.linkname, what)
                    source = target.joinpath(*link_parts)
                    _ensure_dirs(target, link_parts, what)  # no symlink on the way
                    try:
                        st = os.lstat(source)
                    except FileNotFoundError:
                        raise ImageUnsupportedError(
                            f"{what}: the hard link {rel!r} points at {m.linkname!r}, which "
                            "this layer does not hold"
                        ) from None
                    if not stat.S_ISREG(st.st_mode):
                        raise ImageUnsupportedError(
                            f"{what}: the hard link {rel!r} does not point at a regular file"
                        )
                    os.link(source, dest, follow_symlinks=False)
                else:  # character or block device, FIFO: never created
                    info.skipped.append(rel)
    except (tarfile.TarError, EOFError, OSError, UnicodeError) as exc:
        raise ImageUnsupportedError(f"{what} could not be unpacked: {exc}") from None
    for dest, m in reversed(seen_dirs):
        os.chmod(dest, _readable(m.mode, True))
        with contextlib.suppress(OSError):
            os.utime(dest, (m.mtime, m.mtime))
    return info


def assemble_rootfs(layers: list[tuple[Path, LayerInfo]], rootfs: Path) -> None:
    """Apply ``layers`` (tree, info), lowest first, into the empty directory ``rootfs``:
    each layer's opaque directories are emptied and its whiteouts removed, then its tree is
    merged in with hard links."""
    for tree, info in layers:
        what = f"layer {tree.parent.name[:12]}"
        for d in info.opaque:
            parts = safe_parts(d, what)
            if not parts:
                continue
            parent = _ensure_dirs(rootfs, (*parts, "x"), what)
            for child in list(parent.iterdir()) if parent.is_dir() else []:
                _remove(child)
        for w in info.whiteouts:
            parts = safe_parts(w, what)
            if parts:
                parent = _ensure_dirs(rootfs, parts, what)
                _remove(parent / parts[-1])
        _merge(tree, rootfs, what)


def _merge(src: Path, dst: Path, what: str) -> None:
    for entry in os.scandir(src):
        s = Path(entry.path)
        d = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            try:
                st = os.lstat(d)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(d)
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkdir(d)
            _merge(s, d, what)
            os.chmod(d, stat.S_IMODE(os.lstat(s).st_mode))
            continue
        _remove(d)
        if entry.is_symlink():
            os.symlink(os.readlink(s), d)
        else:
            os.link(s, d, follow_symlinks=False)
