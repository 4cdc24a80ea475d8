"""Volumes: named, versioned file trees of an account, stored as content-addressed chunks in
the blob store. A version is a manifest (path -> file entry); a commit applies changes to the
latest version and makes a new one, atomically."""

from __future__ import annotations

import posixpath

from pydantic import Field, field_validator

from crucible.protocol.common import MAX_WIRE_INT, Named, Wire, WireInt

__all__ = [
    "CHUNK_BYTES",
    "FileEntry",
    "Manifest",
    "VolumeCommit",
    "VolumeCreate",
    "VolumeInfo",
    "VolumeVersion",
    "check_mount_path",
    "check_volume_path",
]

CHUNK_BYTES = 4 * 1024 * 1024  # files are cut into chunks of this size (the last shorter)
MAX_FILES = 1_000_000
_SHA = r"^[0-9a-f]{64}$"
# Where a volume may not be mounted: the system's and the sandbox's own directories.
_RESERVED_MOUNTS = (
    "/",
    "/bin",
    "/boot",
    "/crucible",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
)


# The longest file name Linux file systems hold (NAME_MAX).
NAME_MAX_BYTES = 255


def check_volume_path(path: str) -> str:
    """A file's path inside a volume: relative, normalized, no '..', no NUL."""
    if not path or len(path) > 4096 or "\x00" in path:
        raise ValueError("a volume path must be 1-4096 characters without NUL")
    given = path
    if path.startswith("/"):
        path = path.lstrip("/")
    norm = posixpath.normpath(path) if path else "."
    if norm == ".":
        raise ValueError(f"volume path {given[:200]!r} is the volume's root, not a file in it")
    if norm.startswith("../") or norm == ".." or "/../" in f"/{norm}/":
        raise ValueError(f"volume path {given[:200]!r} leaves the volume")
    for part in norm.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
            raise ValueError(
                f"a file or directory name in a volume is at most {NAME_MAX_BYTES} bytes (what "
                f"file systems hold, so that it can be mounted); {part[:40]!r}... is "
                f"{len(part.encode('utf-8', 'surrogatepass'))}: shorten it"
            )
    return norm


def check_mount_path(path: str) -> str:
    """Where a volume appears in a container: an absolute path outside system directories."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ValueError(f"mount path {str(path)[:200]!r} must be an absolute path like /data")
    norm = posixpath.normpath(path)
    inside = [r for r in _RESERVED_MOUNTS if norm == r or norm.startswith(r.rstrip("/") + "/")]
    if len(norm) > 256 or (inside and inside != ["/"]) or norm == "/":
        raise ValueError(
            f"mount path {norm[:200]!r} is or is inside a system directory; mount volumes at a "
            "new path such as /data or /weights"
        )
    return norm


class FileEntry(Wire):
    size: int = Field(ge=0, le=2**50)
    mode: int = Field(default=0o644, ge=0, le=0o7777)
    mtime_ms: int = Field(default=0, ge=0, le=2**53)
    chunks: list[str] = Field(default_factory=list, max_length=2**20)

    @field_validator("chunks")
    @classmethod
    def _shas(cls, chunks: list[str]) -> list[str]:
        for sha in chunks:
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError("chunks must be sha256 hex digests")
        return chunks


class Manifest(Wire):
    version: int = Field(ge=0, le=MAX_WIRE_INT)
    files: dict[str, FileEntry] = Field(default_factory=dict)


class VolumeCreate(Named):
    create_if_missing: bool = True


class VolumeInfo(Wire):
    name: str
    version: WireInt  # 0: nothing committed yet
    files: WireInt
    size_bytes: WireInt
    created_ms: WireInt
    updated_ms: WireInt


class VolumeVersion(Wire):
    version: WireInt
    files: WireInt
    size_bytes: WireInt
    changed: WireInt  # paths this commit wrote or removed
    created_ms: WireInt
    origin: str  # "client" or the container that committed


class VolumeCommit(Wire):
    """Changes to apply on the latest version: a path set to an entry is written (its chunks
    must be uploaded blobs), a path set to null is removed. Paths others changed since
    ``base_version`` and this commit does not name are kept (last commit wins per file)."""

    base_version: int = Field(ge=0, le=2**31)
    changes: dict[str, FileEntry | None] = Field(min_length=1, max_length=100_000)

    @field_validator("changes")
    @classmethod
    def _paths(cls, changes: dict[str, FileEntry | None]) -> dict[str, FileEntry | None]:
        out: dict[str, FileEntry | None] = {}
        given: dict[str, str] = {}
        for p, e in changes.items():
            norm = check_volume_path(p)
            if norm in out:  # two spellings of one path: one change would be lost
                raise ValueError(
                    f"{given[norm][:200]!r} and {p[:200]!r} are the same path ({norm[:200]!r}) "
                    "in one commit: give each file once"
                )
            out[norm], given[norm] = e, p
        return out
