"""The blob store: content-addressed bytes in a local directory (S3-compatible stores later).

Keys are sha256 hex digests. Writes go to a temporary file and are renamed into place, so a
crash never leaves a partial blob under its final name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from crucible.errors import InvalidRequestError

__all__ = ["LocalBlobStore"]


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def put(self, data: bytes, expected_sha: str | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if expected_sha is not None and sha != expected_sha:
            raise InvalidRequestError(
                f"blob content hashes to {sha}, not {expected_sha}; upload the exact bytes"
            )
        path = self._path(sha)
        if path.exists():
            return sha
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def adopt(self, tmp: Path, sha: str) -> None:
        """Move a verified temporary file (in this store's directory) into place as ``sha``."""
        path = self._path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)

    def get(self, sha: str) -> bytes:
        return self._path(sha).read_bytes()

    def size(self, sha: str) -> int:
        return self._path(sha).stat().st_size
