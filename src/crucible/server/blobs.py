"""The blob store: content-addressed bytes, in a local directory (the default) or in an
S3-compatible object store (operators with many hosts and replicas).

Keys are sha256 hex digests. Nothing is ever visible under its final key half-written: the
local store writes a temporary file and renames it into place; S3 makes an object visible
only once its upload completed. Uploads are staged in a local directory first (where the
server checks their hash), then moved into the store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from crucible.errors import Error, InvalidRequestError
from crucible.settings import Settings

__all__ = ["BlobStore", "LocalBlobStore", "S3BlobStore", "open_blob_store"]


class BlobStore(Protocol):
    # Where uploads are staged before they are verified and adopted (a local directory).
    staging: Path

    def exists(self, sha: str) -> bool: ...

    def put(self, data: bytes, expected_sha: str | None = None) -> str: ...

    def adopt(self, tmp: Path, sha: str) -> None: ...

    def get(self, sha: str) -> bytes: ...

    def size(self, sha: str) -> int: ...

    def delete(self, sha: str) -> None:
        """Remove a blob (nothing happens when it is not there); only blob collection
        (services/retention.py) deletes."""
        ...


def _check(data: bytes, expected_sha: str | None) -> str:
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha is not None and sha != expected_sha:
        raise InvalidRequestError(
            f"blob content hashes to {sha}, not {expected_sha}; upload the exact bytes"
        )
    return sha


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = root

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def put(self, data: bytes, expected_sha: str | None = None) -> str:
        sha = _check(data, expected_sha)
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

    def delete(self, sha: str) -> None:
        self._path(sha).unlink(missing_ok=True)


class S3BlobStore:
    """Blobs as objects ``<prefix><sha[:2]>/<sha>`` of one bucket (boto3; any S3-compatible
    service: AWS, MinIO, Ceph RGW, R2...). Credentials come from the settings or boto3's
    usual chain (environment, instance role)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        staging: Path,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        try:
            import boto3
        except ImportError:
            raise Error("an s3:// blob store needs boto3: pip install 'crucible[s3]'") from None
        self.bucket = bucket
        self.prefix = prefix
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=True)
        self._s3: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
        )

    def _key(self, sha: str) -> str:
        return f"{self.prefix}{sha[:2]}/{sha}"

    def _missing(self, exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def exists(self, sha: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(sha))
        except Exception as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def put(self, data: bytes, expected_sha: str | None = None) -> str:
        sha = _check(data, expected_sha)
        if not self.exists(sha):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(sha), Body=data)
        return sha

    def adopt(self, tmp: Path, sha: str) -> None:
        try:
            self._s3.upload_file(str(tmp), self.bucket, self._key(sha))
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, sha: str) -> bytes:
        body = self._s3.get_object(Bucket=self.bucket, Key=self._key(sha))["Body"]
        return bytes(body.read())

    def size(self, sha: str) -> int:
        head = self._s3.head_object(Bucket=self.bucket, Key=self._key(sha))
        return int(head["ContentLength"])

    def delete(self, sha: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(sha))


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: ``CRUCIBLE_BLOB_STORE`` = ``s3://bucket/prefix``
    (with ``CRUCIBLE_S3_*``), else the local directory ``blob_path``."""
    url = settings.blob_store.strip()
    if not url:
        return LocalBlobStore(settings.blob_path)
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise Error(
            f"CRUCIBLE_BLOB_STORE={url!r}: expected s3://BUCKET[/PREFIX] or empty for the "
            "local directory"
        )
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3BlobStore(
        parsed.netloc,
        prefix,
        settings.blob_path / "staging",
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key_id,
        secret_key=settings.s3_secret_access_key,
    )
