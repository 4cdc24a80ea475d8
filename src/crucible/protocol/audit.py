"""The audit log on the wire: privileged actions (tokens, accounts, credits, prices, drains,
verification results), newest first, for admins."""

from __future__ import annotations

from typing import Any

from crucible.protocol.common import Wire, WireInt

__all__ = ["AuditEntry", "AuditPage"]


class AuditEntry(Wire):
    id: WireInt
    ts_ms: WireInt
    # Who acted: an account and its token; both None for the server itself (a verification).
    actor_account_id: str | None = None
    actor_token_id: str | None = None
    action: str  # e.g. token.create, credits.grant, host.offer, host.verification
    target: str  # the id the action was taken on (a token, account, host ...)
    account_id: str | None = None  # the account affected, when there is one
    detail: dict[str, Any]


class AuditPage(Wire):
    entries: list[AuditEntry]
    # Pass as ``before`` for the next (older) page; None when this page is the last.
    next_before: WireInt | None = None
