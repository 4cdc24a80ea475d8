"""``crucible.Volume``: named, versioned file trees, shared by an account's containers and
clients.

From anywhere: list, read (chunk by chunk: a big file is never fetched whole first), upload
(``with vol.batch_upload() as up: up.put_file(...)``), remove, history. In a container that
mounts it (``@app.function(volumes={"/data": vol})``): files appear at the mount path at the
latest committed version; writes stay in the container until ``vol.commit()`` (or until
the last container of its sandbox to use the mount stops: :func:`commit_at_exit`);
``vol.reload()`` moves to the latest version (files changed locally since are kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from crucible.errors import Error, InvalidRequestError
from crucible.protocol.transport import url_part
from crucible.protocol.volumes import (
    CHUNK_BYTES,
    FileEntry,
    Manifest,
    VolumeInfo,
    VolumeVersion,
    check_volume_path,
)
from crucible.sdk._checks import check_object_name
from crucible.sdk._client import Client

__all__ = ["FileInfo", "Volume", "commit_at_exit", "mount_volumes"]

log = logging.getLogger("crucible.volumes")


def _path(path: str) -> str:
    """A file's path in a volume, as :func:`check_volume_path` reads it; a path that is not
    one is the caller's mistake (InvalidRequestError), with what to write instead."""
    try:
        return check_volume_path(path)
    except ValueError as exc:
        raise InvalidRequestError(
            f"{exc}: give a path inside the volume, such as /data/train.jsonl"
        ) from None


@dataclass(frozen=True)
class FileInfo:
    path: str
    type: str  # "file" or "dir"
    size: int = 0
    mtime_ms: int = 0


@dataclass
class _Mount:
    path: Path
    base: Manifest
    client: Client
    cache: Path | None = None
    held: int | None = None  # this container's hold on the mount directory (see _hold)


def _chunk(client: Client, sha: str, cache: Path | None) -> bytes:
    """A chunk's bytes, from the host's chunk cache when it has them (the agent keeps that
    directory per account and evicts the least recently used chunks)."""
    if cache is None:
        return client.download_blob(sha)
    path = cache / sha[:2] / sha
    try:
        data = path.read_bytes()
        os.utime(path)  # recently used
        return data
    except FileNotFoundError:
        pass
    data = client.download_blob(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


# Volumes mounted in this container (by name), set by the worker at start.
_MOUNTED: dict[str, _Mount] = {}
_HELD: list[int] = []  # the mount directories' descriptors this container holds (see _hold)


def _hold(root: Path) -> tuple[int, bool]:
    """Hold the mount directory (an ``flock`` on it) for as long as this container lives, as
    every container of the sandbox does: exclusively when no other live container holds it
    (then True: it is alone, until :func:`_share`), else shared. The kernel drops a hold
    when its process ends, however it ends."""
    import fcntl  # in a container (Linux); the SDK itself imports on any system

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, False)
    _HELD.append(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, True
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd, False


def _share(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_SH)


def _last(fd: int) -> bool:
    """Whether this container is the last live one of its sandbox to hold the mount (its
    hold turned exclusive, then)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _upload_file(client: Client, local: Path) -> FileEntry:
    """Upload a file's chunks (each once: the server keeps what it has) and describe it."""
    chunks: list[str] = []
    size = 0
    with open(local, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            chunks.append(client.upload_blob(block))
            size += len(block)
    st = local.stat()
    return FileEntry(
        size=size, mode=stat.S_IMODE(st.st_mode), mtime_ms=int(st.st_mtime * 1000), chunks=chunks
    )


def _write_file(client: Client, entry: FileEntry, target: Path, cache: Path | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # A short name of its own: the file's name with a suffix would pass the file system's
    # 255-byte limit for a name the volume holds.
    short = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]
    tmp = target.with_name(f".{short}.crucible-tmp")
    with open(tmp, "wb") as f:
        for sha in entry.chunks:
            f.write(_chunk(client, sha, cache))
    os.chmod(tmp, entry.mode or 0o644)
    mtime = entry.mtime_ms / 1000
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, target)


def _local_state(root: Path, others: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """(size, mtime_ms) of every regular file under a mount; the paths of anything else a
    volume cannot hold (symlinks, sockets, fifos) are added to ``others``."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            if name.endswith(".crucible-tmp"):
                continue
            full = Path(dirpath) / name
            st = full.lstat()
            rel = full.relative_to(root).as_posix()
            if stat.S_ISREG(st.st_mode):
                out[rel] = (st.st_size, int(st.st_mtime * 1000))
            elif others is not None:
                others.append(rel)
    return out


def _unchanged(entry: FileEntry | None, local: tuple[int, int] | None) -> bool:
    if entry is None or local is None:
        return entry is None and local is None
    return (entry.size, entry.mtime_ms) == local


class Volume:
    """A handle on the volume ``name`` of your account."""

    def __init__(self, name: str, client: Client | None) -> None:
        self.name = check_object_name("volume", name)
        self._client = client

    def __repr__(self) -> str:
        return f"Volume.from_name({self.name!r})"

    @classmethod
    def from_name(
        cls, name: str, *, create_if_missing: bool = False, client: Client | None = None
    ) -> Volume:
        """A handle; with ``create_if_missing``, the volume is created now if it is not
        there. Otherwise nothing is checked until first use (a function that mounts a
        missing volume is refused when the app starts)."""
        vol = cls(name, client)
        if create_if_missing:
            vol.client.post("/v1/volumes", {"name": name, "create_if_missing": True})
        return vol

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.from_settings()
        return self._client

    @staticmethod
    def delete(name: str, *, client: Client | None = None) -> None:
        """Delete the volume and its history."""
        client = client or Client.from_settings()
        client.transport.request("DELETE", f"/v1/volumes/{url_part(name)}")

    def info(self) -> VolumeInfo:
        return VolumeInfo.model_validate(self.client.get(f"/v1/volumes/{self.name}"))

    def history(self) -> list[VolumeVersion]:
        data = self.client.get(f"/v1/volumes/{self.name}/history")
        return [VolumeVersion.model_validate(v) for v in data]

    def manifest(self, version: int | None = None) -> Manifest:
        query = f"?version={version}" if version is not None else ""
        return Manifest.model_validate(self.client.get(f"/v1/volumes/{self.name}/manifest{query}"))

    # -- reading ----------------------------------------------------------------------------
    def listdir(self, path: str = "/", *, recursive: bool = False) -> list[FileInfo]:
        """Files and directories under ``path`` (all of them with ``recursive``)."""
        prefix = "" if path.strip("/") == "" else _path(path) + "/"
        out: dict[str, FileInfo] = {}
        files = self.manifest().files
        if prefix and prefix[:-1] in files:
            e = files[prefix[:-1]]
            return [FileInfo(prefix[:-1], "file", e.size, e.mtime_ms)]
        for p, e in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if recursive or "/" not in rest:
                out[p] = FileInfo(p, "file", e.size, e.mtime_ms)
            else:
                d = prefix + rest.split("/", 1)[0]
                out.setdefault(d, FileInfo(d, "dir"))
        if prefix and not out:
            raise FileNotFoundError(f"{path} is not in volume {self.name!r}")
        return list(out.values())

    def read_file(self, path: str, *, version: int | None = None) -> Iterator[bytes]:
        """The file's bytes, a chunk (4 MiB) at a time."""
        files = self.manifest(version).files
        entry = files.get(_path(path))
        if entry is None:
            inside = _path(path) + "/"
            if any(p.startswith(inside) for p in files):
                raise InvalidRequestError(
                    f"{path} is a directory in volume {self.name!r}, not a file: its files are "
                    f"listed by list_files() (`crucible volume ls {self.name} {path}`)"
                )
            raise FileNotFoundError(f"{path} is not in volume {self.name!r}")
        client = self.client
        for sha in entry.chunks:
            yield client.download_blob(sha)

    # -- writing from anywhere -------------------------------------------------------------
    def batch_upload(self, *, force: bool = False) -> _BatchUpload:
        """``with vol.batch_upload() as up: up.put_file("a.bin", "/models/a.bin")``: one
        commit at the end. Without ``force``, putting over an existing file is an error."""
        return _BatchUpload(self, force)

    def remove_file(self, path: str, *, recursive: bool = False) -> VolumeVersion:
        target = _path(path)
        files = self.manifest().files
        gone = [p for p in files if p == target or (recursive and p.startswith(target + "/"))]
        if not gone:
            if any(p.startswith(target + "/") for p in files):
                raise InvalidRequestError(
                    f"{path} is a directory: pass recursive=True (`crucible volume rm -r`)"
                )
            raise FileNotFoundError(f"{path} is not in volume {self.name!r}")
        return self._commit({p: None for p in gone}, self.info().version)

    def _commit(self, changes: dict[str, FileEntry | None], base: int) -> VolumeVersion:
        body = {
            "base_version": base,
            "changes": {p: (None if e is None else e.model_dump()) for p, e in changes.items()},
        }
        return VolumeVersion.model_validate(
            self.client.post(f"/v1/volumes/{self.name}/commit", body)
        )

    # -- in a container that mounts it -------------------------------------------------------
    def _mount(self) -> _Mount:
        mount = _MOUNTED.get(self.name)
        if mount is None:
            raise Error(
                f"volume {self.name!r} is not mounted here: commit() and reload() work in a "
                f"container of a function with volumes={{'/path': Volume.from_name("
                f"{self.name!r})}}; elsewhere use batch_upload() and read_file()"
            )
        return mount

    def commit(self) -> VolumeVersion | None:
        """Publish this container's changes under the mount as a new version (None when
        nothing changed). Files others committed meanwhile are kept. A volume holds regular
        files: symlinks (and sockets, fifos) are left out, with a warning naming them."""
        mount = self._mount()
        others: list[str] = []
        local = _local_state(mount.path, others)
        if others:
            shown = ", ".join(sorted(others)[:5]) + (", ..." if len(others) > 5 else "")
            warnings.warn(
                f"volume {self.name!r}: {len(others)} path(s) not committed, since a volume "
                f"holds regular files only (symlinks, sockets and fifos are left out): {shown}",
                stacklevel=2,
            )
        changes: dict[str, FileEntry | None] = {}
        for rel, state in local.items():
            if not _unchanged(mount.base.files.get(rel), state):
                changes[rel] = _upload_file(mount.client, mount.path / rel)
        for rel in mount.base.files:
            if rel not in local:
                changes[rel] = None
        if not changes:
            return None
        done = self._commit(changes, mount.base.version)
        mount.base = self.manifest(done.version)
        return done

    def reload(self) -> int:
        """Move the mount to the latest version: files this container has not changed are
        updated or removed; its own changes stay. Returns the version now mounted."""
        mount = self._mount()
        latest = self.manifest()
        local = _local_state(mount.path)
        for rel, entry in latest.files.items():
            mine = mount.base.files.get(rel)
            if _unchanged(mine, local.get(rel)) and entry != mine:
                _write_file(mount.client, entry, mount.path / rel, mount.cache)
        for rel, mine in mount.base.files.items():
            if rel not in latest.files and _unchanged(mine, local.get(rel)):
                (mount.path / rel).unlink(missing_ok=True)
        mount.base = latest
        return latest.version


@dataclass
class _BatchUpload:
    volume: Volume
    force: bool
    _changes: dict[str, FileEntry] = field(default_factory=dict)

    def __enter__(self) -> _BatchUpload:
        return self

    def put_file(self, local: str | os.PathLike[str], remote: str) -> None:
        path = Path(local)
        if not path.is_file():
            raise FileNotFoundError(f"{local} is not a file")
        self._changes[_path(remote)] = _upload_file(self.volume.client, path)

    def put_directory(self, local: str | os.PathLike[str], remote: str) -> None:
        root = Path(local)
        if not root.is_dir():
            raise FileNotFoundError(f"{local} is not a directory")
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = file.relative_to(root).as_posix()
            self.put_file(file, posixpath.join(remote, rel))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or not self._changes:
            return
        info = self.volume.info()
        if not self.force:
            existing = set(self.volume.manifest().files)
            clash = sorted(set(self._changes) & existing)
            if clash:
                raise InvalidRequestError(
                    f"{clash[0]} already exists in volume {self.volume.name!r}: "
                    "use batch_upload(force=True) (`crucible volume put --force`) to overwrite"
                )
        self.volume._commit(dict(self._changes), info.version)


def mount_volumes(client: Client, mounts: dict[str, str], cache: Path | None = None) -> None:
    """In a container (called by the worker before the function loads): put each volume's
    latest version at its mount path, which the agent bound into the sandbox. ``cache``: the
    host's chunk cache for this account, when the agent provides one."""
    # The agent names the mount directories it bound into the sandbox: a path that merely
    # exists on a host (the process runtime has no mounts) is never written to.
    bound = set(filter(None, os.environ.get("CRUCIBLE_VOLUMES_BOUND", "").split(",")))
    for path, name in mounts.items():
        root = Path(path)
        if path not in bound or not root.is_dir() or not os.access(root, os.W_OK):
            raise Error(
                f"volume {name!r} cannot be mounted at {path}: volumes need a sandboxed host "
                "(the agent's bwrap runtime binds them in); this host runs the process runtime"
            )
        vol = Volume(name, client)
        held, alone = _hold(root)
        latest = vol.manifest()
        here = _local_state(root)  # another container of this sandbox may have filled it
        if alone:
            # No live container of this sandbox uses the directory: what differs from the
            # volume is what a container that has ended wrote and never committed (a crashed
            # attempt's half-written checkpoint, an earlier app's scratch). Dropped, so that
            # this container's commit does not publish it.
            for rel in here.keys() - latest.files.keys():
                with contextlib.suppress(OSError):
                    (root / rel).unlink()
        for rel, entry in latest.files.items():
            if not _unchanged(entry, here.get(rel)):
                _write_file(client, entry, root / rel, cache)
        _share(held)  # the next container of the sandbox uses what is here now
        _MOUNTED[name] = _Mount(root, latest, client, cache, held)


def commit_at_exit() -> None:
    """In a container that stops normally (called by the worker, after the exit hooks): commit
    what is left uncommitted under each mount, as Modal does at shutdown, when this container
    is the last one of its sandbox using the mount. The containers of a sandbox share the
    mount directory, so a container that stops beside others leaves its files to the last
    one, rather than publish what the others are still writing. A container that crashes
    commits nothing (what it left is dropped when the next one mounts alone)."""
    for name, mount in _MOUNTED.items():
        if mount.held is None or not _last(mount.held):
            log.info("volume %r: left to the last container using it to commit", name)
            continue
        # Said first: a container killed before the commit ends leaves this line behind.
        log.info("volume %r: committing what this container left uncommitted", name)
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                done = Volume(name, mount.client).commit()
            for w in said:  # what an explicit commit warns of, as a log line of its own
                log.warning("%s", w.message)
        except Exception as exc:  # the container is stopping: say what was not kept
            log.warning("volume %r: the commit at exit failed, its changes are lost: %s", name, exc)
            continue
        if done is not None:
            log.info(
                "volume %r: committed what this container left uncommitted (version %d)",
                name,
                done.version,
            )
