"""The audit log: privileged actions, written in the transaction that took them (so an action
and its entry commit together or not at all), read by admins only.

Recorded actions (``action`` values, stable): ``account.create``, ``token.create``,
``token.revoke``, ``credits.grant``, ``credits.cap``, ``host.offer`` (a price set),
``host.profile`` (draining, energy source, carbon), ``host.verification`` (a host's first
verification verdict, and each change of it). Details never hold secrets (a token's value
is never stored, only its id).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from crucible.errors import InvalidRequestError, PermissionDeniedError
from crucible.protocol.audit import AuditEntry, AuditPage
from crucible.server.auth import Principal
from crucible.server.store.tables import audit_log

__all__ = ["ACTIONS", "list_audit", "record"]

ACTIONS = (
    "account.create",
    "account.provider",
    "token.create",
    "token.revoke",
    "credits.grant",
    "credits.cap",
    "secrets.rotate",
    "host.offer",
    "host.profile",
    "host.remove",
    "host.verification",
)
MAX_PAGE = 1000


def record(
    conn: Connection,
    actor: Principal | None,
    action: str,
    target: str,
    now_ms: int,
    *,
    account_id: str | None = None,
    **detail: Any,
) -> None:
    """Append one entry (``actor`` None: the server itself). ``detail`` must be JSON."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; add it to ACTIONS")
    conn.execute(
        insert(audit_log).values(
            ts_ms=now_ms,
            actor_account_id=actor.account_id if actor is not None else None,
            actor_token_id=actor.token_id if actor is not None else None,
            action=action,
            target=target,
            account_id=account_id,
            detail=detail,
        )
    )


def list_audit(
    conn: Connection,
    principal: Principal,
    *,
    action: str | None = None,
    account_id: str | None = None,
    target: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    before: int | None = None,
    limit: int = 100,
) -> AuditPage:
    """Entries newest first, filtered; ``before`` (an entry id) pages to older ones. An
    ``account_id`` filter matches the account acted on or the actor's."""
    if not principal.is_admin:
        raise PermissionDeniedError("the audit log is for the exchange's operator (an admin token)")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit={limit} must be within 1..{MAX_PAGE}")
    if action is not None and action not in ACTIONS:
        raise InvalidRequestError(
            f"unknown action {action!r}; the log records: {', '.join(ACTIONS)}"
        )
    q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
    if action is not None:
        q = q.where(audit_log.c.action == action)
    if account_id is not None:
        q = q.where(
            (audit_log.c.account_id == account_id) | (audit_log.c.actor_account_id == account_id)
        )
    if target is not None:
        q = q.where(audit_log.c.target == target)
    if since_ms is not None:
        q = q.where(audit_log.c.ts_ms >= since_ms)
    if until_ms is not None:
        q = q.where(audit_log.c.ts_ms < until_ms)
    if before is not None:
        q = q.where(audit_log.c.id < before)
    rows = conn.execute(q).all()
    entries = [
        AuditEntry(
            id=r.id,
            ts_ms=r.ts_ms,
            actor_account_id=r.actor_account_id,
            actor_token_id=r.actor_token_id,
            action=r.action,
            target=r.target,
            account_id=r.account_id,
            detail=dict(r.detail or {}),
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return AuditPage(entries=entries, next_before=entries[-1].id if more and entries else None)
