"""Blob ownership: which account may read which content-addressed blob."""

from __future__ import annotations

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from crucible.errors import NotFoundError
from crucible.server.store.tables import blobs

__all__ = ["grant_blob", "has_blob", "require_blob", "touch_blob"]


def has_blob(conn: Connection, account_id: str, sha: str) -> bool:
    row = conn.execute(
        select(blobs.c.sha256).where(blobs.c.account_id == account_id, blobs.c.sha256 == sha)
    ).first()
    return row is not None


# A grant's time is renewed at most this often (a HEAD before every use would otherwise
# write each time); the collection grace is hours, so a minute changes nothing.
_TOUCH_EVERY_MS = 60_000


def touch_blob(conn: Connection, account_id: str, sha: str, now_ms: int) -> None:
    """The account is about to use the blob (it uploaded or checked it): blob collection
    keeps it for a whole grace from now."""
    conn.execute(
        update(blobs)
        .where(
            blobs.c.account_id == account_id,
            blobs.c.sha256 == sha,
            blobs.c.created_ms < now_ms - _TOUCH_EVERY_MS,
        )
        .values(created_ms=now_ms)
    )


def require_blob(conn: Connection, account_id: str, sha: str) -> None:
    if not has_blob(conn, account_id, sha):
        raise NotFoundError(f"blob {sha} not found; upload it first (PUT /v1/blobs/{sha})")


def grant_blob(conn: Connection, account_id: str, sha: str, size: int, now_ms: int) -> None:
    """Let the account read the blob. Granting it again renews the grant's time, which is
    what blob collection's grace counts from."""
    if has_blob(conn, account_id, sha):
        touch_blob(conn, account_id, sha, now_ms)
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
