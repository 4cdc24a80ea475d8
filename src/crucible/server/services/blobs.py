"""Blob ownership: which account may read which content-addressed blob."""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from crucible.errors import NotFoundError
from crucible.server.store.tables import blobs

__all__ = ["grant_blob", "has_blob", "require_blob"]


def has_blob(conn: Connection, account_id: str, sha: str) -> bool:
    row = conn.execute(
        select(blobs.c.sha256).where(blobs.c.account_id == account_id, blobs.c.sha256 == sha)
    ).first()
    return row is not None


def require_blob(conn: Connection, account_id: str, sha: str) -> None:
    if not has_blob(conn, account_id, sha):
        raise NotFoundError(f"blob {sha} not found; upload it first (PUT /v1/blobs/{sha})")


def grant_blob(conn: Connection, account_id: str, sha: str, size: int, now_ms: int) -> None:
    if has_blob(conn, account_id, sha):
        return
    try:
        with conn.begin_nested():
            conn.execute(
                blobs.insert().values(
                    account_id=account_id, sha256=sha, size=size, created_ms=now_ms
                )
            )
    except IntegrityError:
        pass  # a concurrent upload of the same blob by the same account won
