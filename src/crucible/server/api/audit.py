"""The audit log of privileged actions (admin tokens only)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.protocol.audit import AuditPage
from crucible.server.api.deps import Builder, State
from crucible.server.services import audit as svc
from crucible.server.services.accounts import account_id_of

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit")
def get_audit(
    who: Builder,
    state: State,
    action: str | None = Query(default=None, max_length=64),
    account: str | None = Query(default=None, max_length=64, description="an account id or name"),
    target: str | None = Query(default=None, max_length=128),
    since_ms: int | None = Query(default=None, ge=0, le=2**53),
    until_ms: int | None = Query(default=None, ge=0, le=2**53),
    before: int | None = Query(default=None, ge=1, le=2**53, description="an entry id"),
    limit: int = Query(default=100, ge=1, le=svc.MAX_PAGE),
) -> AuditPage:
    """Privileged actions, newest first; ``before`` pages to older entries."""
    with state.engine.connect() as conn:
        if account is not None and who.is_admin:  # an unknown name is a 404, not an empty log
            account = account_id_of(conn, account)
        return svc.list_audit(
            conn,
            who,
            action=action,
            account_id=account,
            target=target,
            since_ms=since_ms,
            until_ms=until_ms,
            before=before,
            limit=limit,
        )
