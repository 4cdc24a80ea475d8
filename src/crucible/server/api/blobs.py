"""Blobs: code bundles and large arguments and results, content-addressed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from crucible.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from crucible.server.api.deps import BlobReader, State
from crucible.server.services.blobs import grant_blob, has_blob, touch_blob

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])


def _check_sha(sha: str) -> None:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InvalidRequestError(f"{sha!r} is not a sha256 hex digest (64 lower-case hex chars)")


@router.put("/{sha}", status_code=201)
async def put_blob(sha: str, request: Request, who: BlobReader, state: State) -> dict[str, object]:
    """Upload a blob; its sha256 must match the path. Uploading an existing blob is cheap."""
    _check_sha(sha)
    limit = state.settings.max_blob_bytes
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=state.blobs.staging, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(f"blob is larger than the {limit}-byte limit")
                    digest.update(chunk)
                    f.write(chunk)
            except ClientDisconnect:
                # Gone before its whole body came: nothing is stored (not a server fault).
                raise InvalidRequestError(
                    f"the connection closed after {size:,} bytes of the blob; nothing was stored"
                ) from None
            f.flush()
            os.fsync(f.fileno())  # acknowledged blobs survive a crash, like every other write
        if digest.hexdigest() != sha:
            raise InvalidRequestError(f"the uploaded bytes hash to {digest.hexdigest()}, not {sha}")
        if not state.blobs.exists(sha):
            state.blobs.adopt(Path(tmp), sha)
        with state.engine.begin() as conn:
            grant_blob(conn, who.account_id, sha, size, state.clock.now_ms())
        if not state.blobs.exists(sha) and Path(tmp).exists():
            # Collected (services/retention.py) between the check above and the grant: the
            # grant now keeps it, so store it again.
            state.blobs.adopt(Path(tmp), sha)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"sha256": sha, "size": size}


@router.get("/{sha}")
async def get_blob(sha: str, who: BlobReader, state: State) -> Response:
    _check_sha(sha)
    with state.engine.connect() as conn:
        allowed = has_blob(conn, who.account_id, sha)
    if not allowed or not state.blobs.exists(sha):
        raise NotFoundError(f"blob {sha} not found")
    return Response(state.blobs.get(sha), media_type="application/octet-stream")


@router.head("/{sha}")
async def head_blob(sha: str, who: BlobReader, state: State) -> Response:
    _check_sha(sha)
    with state.engine.begin() as conn:
        allowed = has_blob(conn, who.account_id, sha)
        if allowed:  # a client checks a blob before it uses it: collection waits a grace
            touch_blob(conn, who.account_id, sha, state.clock.now_ms())
    return Response(status_code=200 if allowed and state.blobs.exists(sha) else 404)
