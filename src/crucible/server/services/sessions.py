"""Web console sessions: signing in with an API token, the session behind a cookie, signing out.

The cookie carries a random secret; the store keeps its sha256 only, with the API token that
signed in. Every request re-reads the session joined to its token, so revoking the token
(``crucible token revoke``) ends its sessions at once, as does signing out (the row goes).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from crucible.errors import AuthError, PermissionDeniedError
from crucible.server.auth import Principal, hash_token
from crucible.server.services.accounts import authenticate
from crucible.server.state import ServerState
from crucible.server.store.tables import console_sessions, tokens

__all__ = ["ConsoleSession", "end_session", "read_session", "sign_in"]

# Scopes that may sign in: builders and operators. Host and container tokens are machines'.
_SIGN_IN_SCOPES = ("admin", "user")
# Live console sessions per API token (browsers and devices of one person): the oldest ends
# when one more signs in.
MAX_SESSIONS_PER_TOKEN = 32


@dataclass(frozen=True)
class ConsoleSession:
    principal: Principal
    csrf: str  # the form token of this session (every POST form carries it)
    expires_ms: int

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf, sent or "")


def sign_in(
    conn: Connection, state: ServerState, token: str, now_ms: int, lifetime_ms: int
) -> tuple[str, ConsoleSession]:
    """A new session for a valid user or admin token: (the cookie's secret, the session).
    Raises AuthError for an unknown or revoked token, PermissionDenied for other scopes."""
    token = token.strip()
    if not token:
        raise AuthError("paste an API token (create one with `crucible token create`)")
    try:
        principal = authenticate(state, f"Bearer {token}")
    except AuthError:
        # The API's wording names CRUCIBLE_TOKEN; here the token was pasted into a form.
        raise AuthError(
            "that token is not valid (unknown or revoked): paste a current one, or create "
            "one with `crucible token create`"
        ) from None
    if principal.scope not in _SIGN_IN_SCOPES or principal.token_id is None:
        raise PermissionDeniedError(
            f"a {principal.scope} token cannot sign in to the console; use a user or admin "
            "token (`crucible token create`)"
        )
    # Expired sessions are swept here, at sign-in, rather than by a background task.
    conn.execute(delete(console_sessions).where(console_sessions.c.expires_ms <= now_ms))
    # A token keeps its newest sessions only: signing in again and again (a script, or
    # someone holding a leaked token) ends the oldest instead of growing the table.
    oldest = (
        conn.execute(
            select(console_sessions.c.id_hash)
            .where(console_sessions.c.token_id == principal.token_id)
            .order_by(console_sessions.c.created_ms.desc(), console_sessions.c.id_hash)
            .offset(MAX_SESSIONS_PER_TOKEN - 1)
        )
        .scalars()
        .all()
    )
    if oldest:
        conn.execute(delete(console_sessions).where(console_sessions.c.id_hash.in_(oldest)))
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    expires = now_ms + lifetime_ms
    conn.execute(
        insert(console_sessions).values(
            id_hash=hash_token(secret),
            token_id=principal.token_id,
            csrf=csrf,
            created_ms=now_ms,
            expires_ms=expires,
        )
    )
    return secret, ConsoleSession(principal, csrf, expires)


def read_session(conn: Connection, secret: str | None, now_ms: int) -> ConsoleSession | None:
    """The live session behind a cookie's secret, or None (unknown, expired, signed out, or
    its token revoked)."""
    if not secret or len(secret) > 128:
        return None
    row = conn.execute(
        select(
            console_sessions.c.csrf,
            console_sessions.c.expires_ms,
            tokens.c.id,
            tokens.c.account_id,
            tokens.c.scope,
            tokens.c.revoked,
        )
        .join(tokens, tokens.c.id == console_sessions.c.token_id)
        .where(console_sessions.c.id_hash == hash_token(secret))
    ).first()
    if row is None or row.revoked or row.expires_ms <= now_ms:
        return None
    principal = Principal(row.account_id, row.scope, token_id=row.id)
    return ConsoleSession(principal, row.csrf, row.expires_ms)


def end_session(conn: Connection, secret: str | None) -> None:
    """Sign out: the cookie's session is gone (silently when there was none)."""
    if secret:
        conn.execute(
            delete(console_sessions).where(console_sessions.c.id_hash == hash_token(secret))
        )
