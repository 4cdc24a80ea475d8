"""Idempotency keys of the routes that make something anew (a pod, a reservation, a grant,
a volume version): a client that sent such a request and did not hear the answer (the
server killed between its commit and its reply, a connection cut) sends it again with the
same ``Idempotency-Key`` header and gets the first answer back instead of a second pod.

The key's row is written in the transaction that does the work, so the two commit together
or not at all: a request that failed or was rolled back leaves no key, and its retry runs
afresh. Two requests with one key at once: the second waits on the first's row (the unique
key) and then answers what the first committed. A key names one request of one account for
:data:`KEEP_MS`; the same key with another route or body is refused, not replayed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy import Connection, bindparam, delete, select, update

from crucible.errors import ConflictError
from crucible.server.auth import Principal
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.tables import request_keys

__all__ = ["KEEP_MS", "KeyedRequest", "Replay", "claim", "keep", "keyed", "prune"]

KEEP_MS = 24 * 3_600_000  # as Stripe's: a day is longer than any client's retries

# What a key may be: printable ASCII without spaces (a UUID, a ULID, a client's own scheme).
KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"


class Replay(Exception):
    """The answer a request with this key got the first time, to send as it was
    (server/app.py answers it)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class KeyedRequest:
    account_id: str
    key: str
    route: str  # "POST /v1/pods", with the path's names filled in
    digest: str  # of the route and the request's body as the route parsed it


def keyed(
    who: Principal, key: str | None, route: str, body: BaseModel | None
) -> KeyedRequest | None:
    """The request's key, or None when the client sent none (the route then runs as
    always). The body is digested as parsed (pydantic's own serialization, in the model's
    field order: a 100,000-file volume commit takes ~55 ms, against ~360 ms through
    ``model_dump``), so that the same request sent with its fields in another order or
    spacing is the same request."""
    if key is None:
        return None
    parsed = b"" if body is None else body.model_dump_json().encode()
    digest = hashlib.sha256(route.encode() + b"\n" + parsed).hexdigest()
    return KeyedRequest(who.account_id, key, route, digest)


_CLAIM = InsertSkipping(request_keys, "account_id", "key")
_FIRST = select(
    request_keys.c.route, request_keys.c.digest, request_keys.c.status, request_keys.c.response
).where(
    request_keys.c.account_id == bindparam("b_account"),
    request_keys.c.key == bindparam("b_key"),
)


def claim(conn: Connection, req: KeyedRequest | None, now_ms: int) -> None:
    """Take the key for this request in ``conn``'s transaction, before the route does its
    work. Raises :class:`Replay` with the first answer when the key was used for the same
    request already, and a conflict when it was used for another one."""
    if req is None:
        return
    taken = conn.execute(
        _CLAIM.on(conn).returning(request_keys.c.key),
        {
            "account_id": req.account_id,
            "key": req.key,
            "route": req.route,
            "digest": req.digest,
            "status": 0,
            "response": b"",
            "created_ms": now_ms,
        },
    ).first()
    if taken is not None:
        return
    first = conn.execute(_FIRST, {"b_account": req.account_id, "b_key": req.key}).one()
    if first.digest != req.digest:
        raise ConflictError(
            f"the Idempotency-Key {req.key!r} was used for another request "
            f"({first.route}, or another body) in the last 24 hours; give each new request "
            "a new key, and the same key only to the same request sent again"
        )
    raise Replay(int(first.status), bytes(first.response))


_KEEP = (
    update(request_keys)
    .where(
        request_keys.c.account_id == bindparam("b_account"),
        request_keys.c.key == bindparam("b_key"),
    )
    .values(status=bindparam("b_status"), response=bindparam("b_response"))
)


def keep(conn: Connection, req: KeyedRequest | None, status: int, answer: BaseModel) -> None:
    """Keep the route's answer with its key, in the transaction that did the work."""
    if req is None:
        return
    body = answer.model_dump_json().encode()
    conn.execute(
        _KEEP,
        {"b_account": req.account_id, "b_key": req.key, "b_status": status, "b_response": body},
    )


def prune(conn: Connection, now_ms: int) -> int:
    """Forget keys older than :data:`KEEP_MS`; returns how many."""
    gone = conn.execute(delete(request_keys).where(request_keys.c.created_ms < now_ms - KEEP_MS))
    return int(gone.rowcount or 0)
