"""The agent's OCI image cache: pull once, share layers, commit atomically, evict LRU.

Layout under ``cache_dir``::

    blobs/sha256/<hex>          verified downloads (layer blobs are deleted once unpacked)
    layers/<hex>/tree/          one unpacked layer, by its blob digest; shared by every image
    layers/<hex>/layer.json     written last: its whiteouts and size (no file: not complete)
    images/<hex>/rootfs/        an image's root file system: its layers applied in order,
                                files hard-linked from layers/ (so shared layers cost nothing)
    images/<hex>/image.json     written last: reference, config, layers, size; the LRU clock
    images/<hex>/open-to        registry/repository names that served it without credentials
    locks/                      one lock file per image and per layer being pulled
    .tmp-*                      work in progress, renamed into place when complete

An image (``<hex>`` is its manifest's digest, for this host's platform) exists only once its
directory was renamed into place, so a half-pulled image is never used. Pulls of one image
or one layer hold a lock (a thread lock and an ``flock``, so agents sharing a cache agree):
concurrent pulls of one image do one download. Eviction deletes the least recently used
images that nobody holds (:meth:`OciImages.acquire`) until the layers still referenced fit
``max_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crucible.agent.oci.blobs import BlobStore
from crucible.agent.oci.manifests import (
    is_index,
    parse_config,
    parse_manifest,
    pick_platform,
)
from crucible.agent.oci.registry import RegistryAuth, RegistryClient, RegistryConfig
from crucible.agent.oci.unpack import LayerInfo, assemble_rootfs, unpack_layer
from crucible.agent.parent_death import pid_alive
from crucible.errors import ImagePullError, ImageTooLargeError, ImageUnsupportedError
from crucible.protocol.image_refs import ImageRef, parse_image_ref

__all__ = ["MOUNT_POINTS", "OciImages", "PreparedImage", "ensure_mount_point"]

log = logging.getLogger(__name__)

# Directories every rootfs gets, empty, so that the sandbox can mount over them (the rootfs
# is bound read-only; bwrap cannot create mount points in it).
MOUNT_POINTS = (
    "proc",
    "dev",
    "tmp",
    "crucible/work",
    "crucible/run",
    "crucible/code",
    "crucible/lib",
    "crucible/volumes",
    "crucible/ssh",
    "crucible/sshd",
)
_MIB = 1 << 20
_OPEN_SOURCES = "open-to"
_UNPACKED_FACTOR = 4


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to run: its root file system and what a container starts with."""

    ref: str
    digest: str  # sha256:... of the platform manifest
    rootfs: Path
    env: dict[str, str]
    workdir: str
    user: str
    entrypoint: list[str]
    cmd: list[str]
    size_bytes: int  # unpacked, all layers
    pulled: bool = False  # True when this call downloaded something
    layers: list[str] = field(default_factory=list)


def _noop(_line: str) -> None:
    return None


class OciImages:
    """Pulls OCI images into a content-addressed cache. Thread-safe."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        registries: RegistryConfig | None = None,
        max_bytes: int = 0,
        max_image_bytes: int = 20 << 30,
    ) -> None:
        self.root = Path(cache_dir)
        self.registries = registries or RegistryConfig()
        self.max_bytes = max_bytes
        self.max_image_bytes = max_image_bytes
        for d in ("blobs", "layers", "images", "locks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root / "blobs")
        self._lock = threading.Lock()
        self._named_locks: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        self._pulling: set[str] = set()  # layer hexes being unpacked: never collected
        self._sweep()
        # Counters (tests, benchmarks): blobs and bytes downloaded by this object.
        self.blobs_downloaded = 0
        self.bytes_downloaded = 0

    # -- public API ---------------------------------------------------------------------------
    def prepare(
        self,
        ref: str,
        auth: RegistryAuth | None = None,
        emit: Callable[[str], None] | None = None,
    ) -> PreparedImage:
        """The image ``ref`` ready to run, pulling what this host lacks. A reference pinned by
        digest that is cached needs no registry at all when that registry and repository
        served it without credentials before (a public image); otherwise, and for a tag, the
        registry is asked each time with ``auth`` (one small request), so a tenant never runs
        a private image it could not pull. ``emit`` receives progress lines (never credentials).

        Whoever runs the image calls :meth:`acquire` with its digest (and :meth:`release`
        when done) so that eviction spares it; until then it is the most recently used image,
        evicted only by pulls that need its room.

        Raises :class:`~crucible.errors.ImagePullError` or one of its subclasses."""
        say = emit or _noop
        try:
            parsed = parse_image_ref(ref)
        except ValueError as exc:
            raise ImagePullError(str(exc)) from None
        source = f"{parsed.registry}/{parsed.repository}"
        if parsed.digest:
            found = self._load(parsed.digest)
            if found is not None and self._open_to(parsed.digest, source):
                return self._touch(found)
            # Cached, but this repository never served it without credentials: the image
            # may be someone's private one, so the registry is asked with this caller's
            # credentials (a digest alone, under any name, got any tenant the files).
        client = RegistryClient(parsed, self.registries, auth)
        found = self._from_registry(parsed, client, say)
        if auth is None and parsed.digest:
            self._mark_open(parsed.digest, source)  # served without credentials: public
        return self._touch(found)

    def _from_registry(
        self, parsed: ImageRef, client: RegistryClient, say: Callable[[str], None]
    ) -> PreparedImage:
        """The image as the registry names it now (the caller may read it there), from the
        cache when this host has it, else pulled."""
        body, media, digest = client.manifest(parsed.reference)
        if is_index(media, body):
            digest = pick_platform(body, str(parsed))
            found = self._load(digest)
            if found is not None:
                return found
            body, media, digest = client.manifest(digest)
        found = self._load(digest)
        if found is not None:
            return found
        with self._named("image-" + _hex(digest)):
            found = self._load(digest)
            if found is None:
                found = self._pull(parsed, client, body, digest, say)
                self.evict(keep=digest)
        return found

    def acquire(self, digest: str) -> None:
        """Mark an image in use (a sandbox or pod runs on it): never evicted meanwhile."""
        with self._lock:
            self._in_use[digest] = self._in_use.get(digest, 0) + 1

    def release(self, digest: str) -> None:
        with self._lock:
            n = self._in_use.get(digest, 0) - 1
            if n <= 0:
                self._in_use.pop(digest, None)
            else:
                self._in_use[digest] = n

    def images(self) -> list[tuple[str, int, float]]:
        """(digest, size in bytes, last used as a Unix time) of every complete image."""
        out = []
        for d in (self.root / "images").iterdir():
            meta = d / "image.json"
            if d.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads(meta.read_text())
                out.append((str(info["digest"]), int(info["size_bytes"]), meta.stat().st_mtime))
        return out

    def usage_bytes(self) -> int:
        """Bytes of the unpacked layers on disk (rootfs files are hard links to them)."""
        total = 0
        for d in (self.root / "layers").iterdir():
            with contextlib.suppress(OSError, ValueError):
                total += LayerInfo.from_json((d / "layer.json").read_text()).size_bytes
        return total

    def evict(self, keep: str | None = None) -> list[str]:
        """Delete least recently used images nobody holds, then their unshared layers, until
        the cache fits ``max_bytes``. Returns the evicted digests."""
        evicted: list[str] = []
        self._collect_layers()
        if self.max_bytes <= 0:
            return evicted
        for digest, _size, _used in sorted(self.images(), key=lambda t: t[2]):
            if self.usage_bytes() <= self.max_bytes:
                break
            with self._lock:
                busy = digest in self._in_use or digest == keep
            if busy:
                continue
            log.info("evicting OCI image %s from the cache", digest[:19])
            src = self.root / "images" / _hex(digest)
            trash = self.root / "images" / f".tmp-evict-{_hex(digest)}-{time.monotonic_ns()}"
            with contextlib.suppress(OSError):
                os.rename(src, trash)
                shutil.rmtree(trash, ignore_errors=True)
                evicted.append(digest)
            self._collect_layers()
        return evicted

    def _sweep(self) -> None:
        """Delete what an agent that died mid-pull left (``.tmp-*`` of processes that are
        gone; evictions interrupted after their rename). Pulls of live processes are kept."""
        for sub in ("images", "layers", "blobs"):
            for entry in (self.root / sub).iterdir():
                name = entry.name
                if not name.startswith(".tmp-"):
                    continue
                if not name.startswith(".tmp-evict-"):
                    pid = name.split("-")[-2]
                    if not pid.isdigit() or pid_alive(int(pid)):
                        continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()

    # -- pulling ------------------------------------------------------------------------------
    def _pull(
        self,
        ref: ImageRef,
        client: RegistryClient,
        body: bytes,
        digest: str,
        say: Callable[[str], None],
    ) -> PreparedImage:
        started = time.perf_counter()
        manifest = parse_manifest(body, str(ref))
        if manifest.declared_bytes > self.max_image_bytes:
            raise ImageTooLargeError(
                f"image {ref} is {manifest.declared_bytes / _MIB:.1f} MiB compressed, over "
                f"this host's limit of {self.max_image_bytes >> 20} MiB "
                "(CRUCIBLE_OCI_IMAGE_MAX_MIB)"
            )
        say(
            f"pulling {ref} ({len(manifest.layers)} layers, "
            f"{manifest.declared_bytes / _MIB:.1f} MiB)"
        )
        config = parse_config(self._small_blob(client, manifest.config_digest), str(ref))
        budget = [self.max_image_bytes - manifest.config_size]
        # Unpacked, an image may be 4 times its compressed limit (a gzip bomb stops there).
        unpacked = [self.max_image_bytes * _UNPACKED_FACTOR]
        downloaded_before = self.bytes_downloaded
        layers: list[tuple[Path, LayerInfo]] = []
        for layer in manifest.layers:
            layers.append(self._layer(client, layer.digest, budget, unpacked, say))
        size = sum(info.size_bytes for _, info in layers)
        tmp = self.root / "images" / f".tmp-{_hex(digest)}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            rootfs = tmp / "rootfs"
            rootfs.mkdir(parents=True)
            assemble_rootfs(layers, rootfs)
            for m in MOUNT_POINTS:
                ensure_mount_point(rootfs, m, replace=True)
            meta = {
                "ref": str(ref),
                "digest": digest,
                "size_bytes": size,
                "layers": [layer.digest for layer in manifest.layers],
                "config": config.__dict__,
                "pulled_s": time.perf_counter() - started,
            }
            (tmp / "image.json").write_text(json.dumps(meta))
            os.rename(tmp, self.root / "images" / _hex(digest))
        except OSError as exc:
            raise ImagePullError(f"could not unpack image {ref} on this host: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        got = self.bytes_downloaded - downloaded_before
        elapsed = time.perf_counter() - started
        say(f"pulled {ref} ({digest[:19]}): {got / _MIB:.1f} MiB in {elapsed:.2f} s")
        found = self._load(digest)
        assert found is not None
        return PreparedImage(**{**found.__dict__, "pulled": True})

    def _small_blob(self, client: RegistryClient, digest: str) -> bytes:
        tmp = self.blobs.temp_path(digest)
        try:
            self._count(client.blob_to_file(digest, tmp, max_bytes=4 * _MIB))
            return tmp.read_bytes()
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _layer(
        self,
        client: RegistryClient,
        digest: str,
        budget: list[int],
        unpacked: list[int],
        say: Callable[[str], None],
    ) -> tuple[Path, LayerInfo]:
        hex_ = _hex(digest)
        final = self.root / "layers" / hex_
        with self._lock:
            self._pulling.add(hex_)
        try:
            with self._named("layer-" + hex_):
                try:
                    return final / "tree", LayerInfo.from_json((final / "layer.json").read_text())
                except (OSError, ValueError):
                    pass
                tmp_blob = self.blobs.temp_path(digest)
                size = client.blob_to_file(digest, tmp_blob, max_bytes=max(budget[0], 0))
                budget[0] -= size
                self._count(size)
                blob = self.blobs.commit(digest, tmp_blob)
                say(f"layer {digest[:19]}: {size / _MIB:.1f} MiB downloaded, unpacking")
                work = self.root / "layers" / f".tmp-{hex_}-{os.getpid()}-{threading.get_ident()}"
                shutil.rmtree(work, ignore_errors=True)
                try:
                    (work / "tree").mkdir(parents=True)
                    info = unpack_layer(
                        blob, work / "tree", f"layer {digest[:19]}", max_bytes=unpacked[0]
                    )
                    unpacked[0] -= info.size_bytes
                    (work / "layer.json").write_text(info.to_json())
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(work, final)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                    self.blobs.remove(digest)
                return final / "tree", info
        finally:
            with self._lock:
                self._pulling.discard(hex_)

    def _count(self, size: int) -> None:
        with self._lock:
            self.blobs_downloaded += 1
            self.bytes_downloaded += size

    # -- the store ----------------------------------------------------------------------------
    def _load(self, digest: str) -> PreparedImage | None:
        d = self.root / "images" / _hex(digest)
        try:
            meta = json.loads((d / "image.json").read_text())
        except (OSError, ValueError):
            return None
        c = meta["config"]
        return PreparedImage(
            ref=str(meta["ref"]),
            digest=str(meta["digest"]),
            rootfs=d / "rootfs",
            env=dict(c["env"]),
            workdir=str(c["workdir"]),
            user=str(c["user"]),
            entrypoint=list(c["entrypoint"]),
            cmd=list(c["cmd"]),
            size_bytes=int(meta["size_bytes"]),
            layers=list(meta["layers"]),
        )

    def _open_to(self, digest: str, source: str) -> bool:
        """Whether ``source`` (registry/repository) served ``digest`` without credentials
        before: then its cached copy needs no registry at all."""
        try:
            text = (self.root / "images" / _hex(digest) / _OPEN_SOURCES).read_text()
        except OSError:
            return False
        return source in text.splitlines()

    def _mark_open(self, digest: str, source: str) -> None:
        d = self.root / "images" / _hex(digest)
        if not d.is_dir() or self._open_to(digest, source):
            return
        with contextlib.suppress(OSError), open(d / _OPEN_SOURCES, "a") as f:
            f.write(source + "\n")  # one short append: lines never interleave

    def _touch(self, image: PreparedImage) -> PreparedImage:
        with contextlib.suppress(OSError):
            os.utime(image.rootfs.parent / "image.json")  # the LRU clock
        return image

    def _collect_layers(self) -> None:
        """Delete layers no complete image references (and no pull is using)."""
        wanted: set[str] = set()
        for d in (self.root / "images").iterdir():
            if d.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                wanted.update(_hex(x) for x in json.loads((d / "image.json").read_text())["layers"])
        with self._lock:
            wanted |= self._pulling
        for d in (self.root / "layers").iterdir():
            if d.name.startswith(".") or d.name in wanted:
                continue
            with self._named("layer-" + d.name):
                with self._lock:
                    if d.name in self._pulling:
                        continue
                shutil.rmtree(d, ignore_errors=True)

    @contextlib.contextmanager
    def _named(self, name: str) -> Iterator[None]:
        """A lock by name: a thread lock in this process and an flock across processes."""
        with self._lock:
            tlock = self._named_locks.setdefault(name, threading.Lock())
        with tlock:
            fd = os.open(self.root / "locks" / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def ensure_mount_point(rootfs: Path, inside: str, *, replace: bool = False) -> None:
    """Create the directory ``inside`` (an absolute path in the image) under ``rootfs``,
    never following a link. What the image has on the way that is not a directory is
    replaced with ``replace`` (the rootfs's own mount points), else refused."""
    cur = rootfs
    for part in [p for p in inside.split("/") if p and p != "."]:
        if part == "..":
            raise ImageUnsupportedError(f"mount path {inside!r} holds '..'")
        cur = cur / part
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            if not replace:
                raise ImageUnsupportedError(
                    f"cannot mount at {inside}: the image has a file or link at "
                    f"/{cur.relative_to(rootfs)}"
                )
            cur.unlink()
        if not cur.exists():
            cur.mkdir(mode=0o755)
