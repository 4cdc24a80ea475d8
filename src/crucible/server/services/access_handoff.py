"""Access sessions handed to agents through the store, for replicas (CRUCIBLE_ADVERTISE_URL).

The replica that holds a client's exec, SSH or port session writes its request here; the
replica that the host's agent syncs with takes it (the delete is the hand-over, so each
request reaches the agent once) and puts it in the sync reply; the agent dials the request's
``dial_url`` back, which is the first replica's own URL. See server/relay.py.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert

from crucible.protocol.access import AccessRequest
from crucible.server.store.tables import access_requests

__all__ = ["drop_request", "put_request", "take_requests"]


def put_request(conn: Connection, host_id: str, request: AccessRequest, now_ms: int) -> None:
    conn.execute(
        insert(access_requests).values(
            session_id=request.session_id,
            host_id=host_id,
            request=request.model_dump_json(),
            created_ms=now_ms,
        )
    )


def take_requests(conn: Connection, host_id: str) -> list[AccessRequest]:
    """The host's waiting requests, removed: whoever commits this hands them over."""
    rows = conn.execute(
        delete(access_requests)
        .where(access_requests.c.host_id == host_id)
        .returning(access_requests.c.request)
    ).all()
    return [AccessRequest.model_validate_json(r.request) for r in rows]


def drop_request(conn: Connection, session_id: str) -> None:
    """Forget a request no agent took (the session timed out or its client left)."""
    conn.execute(delete(access_requests).where(access_requests.c.session_id == session_id))
