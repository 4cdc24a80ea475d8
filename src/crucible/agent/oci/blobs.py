"""The content-addressed blob store of the OCI cache: ``<root>/sha256/<hex>``.

A blob is written under a temporary name while it downloads and is renamed to its digest
only once its bytes hashed to it (:meth:`RegistryClient.blob_to_file` checks), so a name in
the store always holds the bytes it names. Layer blobs are deleted once unpacked; manifests
and configs are small and kept with their image.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

__all__ = ["BlobStore", "check_digest"]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(digest: object) -> str:
    """``digest`` if it is ``sha256:<64 hex>``; else ``ValueError`` (a manifest could name
    ``../../etc/passwd`` as a digest: never used as a path unchecked)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ValueError(f"{str(digest)[:80]!r} is not a sha256 digest")
    return digest


class BlobStore:
    """Verified blobs by digest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / check_digest(digest).split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def temp_path(self, digest: str) -> Path:
        """Where a download of ``digest`` is written before :meth:`commit`."""
        hex_ = check_digest(digest).split(":", 1)[1]
        return self.root / f".tmp-{hex_}-{os.getpid()}-{threading.get_ident()}"

    def commit(self, digest: str, temp: Path) -> Path:
        """Move a verified download into place (atomic rename)."""
        final = self.path(digest)
        os.replace(temp, final)
        return final

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()
