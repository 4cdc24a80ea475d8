"""Accounts and tokens."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update

from crucible.errors import (
    AuthError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from crucible.protocol.accounts import (
    AccountInfo,
    AccountUpdate,
    Scope,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal, hash_token, new_api_token, verify_container_token
from crucible.server.services import audit
from crucible.server.services.hosts import open_hosts_of
from crucible.server.state import ServerState
from crucible.server.store.tables import accounts, containers, tokens

__all__ = [
    "authenticate",
    "create_account",
    "create_token",
    "ensure_account",
    "get_account",
    "list_accounts",
    "list_all_tokens",
    "list_tokens",
    "revoke_token",
    "update_account",
]

_TOKEN_CACHE_TTL_S = 5.0  # a revoked token stops working within this time
# Live (not revoked) tokens a user token may hold for its account: far more than every
# person, host and CI job of a team needs, and a bound on what one leaked token can mint
# (each is a row read at authentication). Admin tokens are not limited.
MAX_TOKENS_PER_ACCOUNT = 1000


def ensure_account(conn: Connection, name: str, now_ms: int, *, provider: bool = False) -> str:
    """The id of the account called ``name``, created if missing; ``provider``: approved to
    run other accounts' work on its hosts (the operator's own account)."""
    row = conn.execute(
        select(accounts.c.id, accounts.c.provider).where(accounts.c.name == name)
    ).first()
    if row is not None:
        if provider and not row.provider:
            conn.execute(update(accounts).where(accounts.c.id == row.id).values(provider=True))
            open_hosts_of(conn, row.id, provider=True, now_ms=now_ms)
        return str(row.id)
    account_id = new_id("ac")
    conn.execute(
        insert(accounts).values(id=account_id, name=name, created_ms=now_ms, provider=provider)
    )
    return account_id


def create_account(conn: Connection, principal: Principal, name: str, now_ms: int) -> AccountInfo:
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin token can create accounts")
    if conn.execute(select(accounts.c.id).where(accounts.c.name == name)).first():
        raise ConflictError(f"an account named {name!r} exists; pick another name")
    if name.startswith("ac-"):
        # Accounts are named by id or name alike (grants, caps, tokens): a name that looks
        # like an id could be another account's id.
        raise InvalidRequestError(
            f"account name {name!r}: 'ac-' starts account ids; pick a name without it"
        )
    account_id = ensure_account(conn, name, now_ms)
    audit.record(
        conn, principal, "account.create", account_id, now_ms, account_id=account_id, name=name
    )
    return AccountInfo(id=account_id, name=name, created_ms=now_ms)


def _info(row: Any) -> AccountInfo:
    return AccountInfo(
        id=row.id, name=row.name, created_ms=row.created_ms, provider=bool(row.provider)
    )


def get_account(conn: Connection, account_id: str) -> AccountInfo:
    row = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
    if row is None:
        raise NotFoundError(f"account {account_id} not found")
    return _info(row)


def update_account(
    conn: Connection, principal: Principal, name_or_id: str, req: AccountUpdate, now_ms: int
) -> tuple[AccountInfo, list[str]]:
    """An admin approves an account as a provider (its fully isolated hosts then run other
    accounts' work) or takes the approval back (they run its own work only from then on:
    other accounts' containers there are asked to stop). Returns wake-up keys too."""
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin token can change accounts")
    account_id = account_id_of(conn, name_or_id)
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(provider=req.provider))
    opened, keys = open_hosts_of(conn, account_id, provider=req.provider, now_ms=now_ms)
    audit.record(
        conn,
        principal,
        "account.provider",
        account_id,
        now_ms,
        account_id=account_id,
        provider=req.provider,
        hosts_open=opened,
    )
    return get_account(conn, account_id), keys


def issue_token(
    conn: Connection, account_id: str, scope: Scope, name: str, now_ms: int
) -> TokenCreated:
    secret = new_api_token()
    token_id = new_id("tk")
    conn.execute(
        insert(tokens).values(
            id=token_id,
            account_id=account_id,
            hash=hash_token(secret),
            scope=scope.value,
            name=name,
            created_ms=now_ms,
            revoked=False,
        )
    )
    return TokenCreated(
        id=token_id,
        account_id=account_id,
        scope=scope,
        name=name,
        created_ms=now_ms,
        revoked=False,
        token=secret,
    )


def create_token(
    conn: Connection, principal: Principal, req: TokenCreate, now_ms: int
) -> TokenCreated:
    account_id = principal.account_id
    if req.account_id is not None and req.account_id != principal.account_id:
        if not principal.is_admin:
            raise PermissionDeniedError("only an admin token can create tokens for other accounts")
        # The account's id or its name (the admin just made it with `crucible account
        # create NAME`, which prints both).
        account_id = account_id_of(conn, req.account_id)
    if req.scope == Scope.ADMIN and not principal.is_admin:
        raise PermissionDeniedError("only an admin token can create admin tokens")
    if principal.scope not in (Scope.ADMIN, Scope.USER):
        raise PermissionDeniedError("host and container tokens cannot create tokens")
    if (
        principal.token_id is not None
        and conn.execute(select(tokens.c.revoked).where(tokens.c.id == principal.token_id)).scalar()
    ):
        # Read from the store, not the token cache: a token revoked through another replica
        # works there for a few seconds, and must not mint one that outlives the revocation.
        raise AuthError("this token was revoked; use another (`crucible token list`)")
    if not principal.is_admin:
        live = conn.execute(
            select(func.count())
            .select_from(tokens)
            .where(tokens.c.account_id == account_id, tokens.c.revoked.is_(False))
        ).scalar_one()
        if live >= MAX_TOKENS_PER_ACCOUNT:
            raise InvalidRequestError(
                f"your account already has {live} live tokens, the most allowed; revoke "
                "unused ones with `crucible token revoke tk-...` (`crucible token list`)"
            )
    made = issue_token(conn, account_id, req.scope, req.name, now_ms)
    audit.record(
        conn,
        principal,
        "token.create",
        made.id,
        now_ms,
        account_id=account_id,
        scope=req.scope.value,
        name=req.name,
    )
    return made


def list_tokens(conn: Connection, principal: Principal) -> list[TokenInfo]:
    rows = conn.execute(
        select(tokens).where(tokens.c.account_id == principal.account_id).order_by(tokens.c.id)
    )
    return [
        TokenInfo(
            id=r.id,
            account_id=r.account_id,
            scope=Scope(r.scope),
            name=r.name,
            created_ms=r.created_ms,
            revoked=r.revoked,
        )
        for r in rows
    ]


def list_accounts(conn: Connection, principal: Principal, limit: int = 500) -> list[AccountInfo]:
    """Every account, newest first (the operator's view)."""
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin token can list accounts")
    rows = conn.execute(select(accounts).order_by(accounts.c.created_ms.desc()).limit(limit))
    return [_info(r) for r in rows]


def list_all_tokens(conn: Connection, principal: Principal, limit: int = 500) -> list[TokenInfo]:
    """Every account's tokens (never their secrets: only hashes are stored), newest first."""
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin token can list every account's tokens")
    rows = conn.execute(select(tokens).order_by(tokens.c.created_ms.desc()).limit(limit))
    return [
        TokenInfo(
            id=r.id,
            account_id=r.account_id,
            scope=Scope(r.scope),
            name=r.name,
            created_ms=r.created_ms,
            revoked=r.revoked,
        )
        for r in rows
    ]


def revoke_token(
    conn: Connection, state: ServerState, principal: Principal, token_id: str, force: bool = False
) -> None:
    """Revoke a token of the caller's account. Without ``force``, the caller's own token and
    the exchange's last admin token are refused: either would lock someone out."""
    was = conn.execute(
        select(tokens.c.revoked, tokens.c.scope).where(
            tokens.c.id == token_id, tokens.c.account_id == principal.account_id
        )
    ).first()
    if was is None:
        raise NotFoundError(f"token {token_id} not found (`crucible token list` shows yours)")
    if was.revoked:
        return  # already: nothing changes, and nothing more goes to the audit log
    if not force:
        _check_not_locking_out(conn, principal, token_id, was.scope)
    conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked=True))
    audit.record(
        conn,
        principal,
        "token.revoke",
        token_id,
        state.clock.now_ms(),
        account_id=principal.account_id,
    )
    state.auth.token_cache.clear()


def _check_not_locking_out(
    conn: Connection, principal: Principal, token_id: str, scope: str
) -> None:
    if token_id == principal.token_id:
        raise ConflictError(
            f"token {token_id} is the one this request was made with: revoked, every later "
            "request with it is refused, this one's included, and it cannot make another. "
            "Create a new token first (`crucible token create`) and use it; to revoke this "
            "one anyway, pass --force (force=true)"
        )
    if scope == Scope.ADMIN:
        admins = conn.execute(
            select(func.count())
            .select_from(tokens)
            .where(tokens.c.scope == Scope.ADMIN.value, tokens.c.revoked.is_(False))
        ).scalar_one()
        if admins <= 1:
            raise ConflictError(
                f"token {token_id} is the exchange's last admin token: revoked, no one could "
                "create accounts, grant credits or manage hosts any more. Create another admin "
                "token first (`crucible token create --scope admin`); to revoke this one "
                "anyway, pass --force (force=true)"
            )


def authenticate(state: ServerState, header: str | None) -> Principal:
    """The principal behind an ``Authorization: Bearer`` header, or AuthError. The scheme's
    case does not matter (RFC 9110: ``bearer`` is ``Bearer``)."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(
            "this route needs a token: send 'Authorization: Bearer <token>' "
            "(create one with `crucible token create`)"
            if not header
            else "the Authorization header's scheme is not Bearer: send 'Authorization: "
            "Bearer <token>' (create one with `crucible token create`)"
        )
    token = token.strip()
    if token.startswith("ctr_"):
        container_id = verify_container_token(state.secret, token)
        if container_id is None:
            raise AuthError("the container token's signature is wrong")
        account_id = state.auth.container_accounts.get(container_id)
        if account_id is None:
            with state.engine.connect() as conn:
                row = conn.execute(
                    select(containers.c.account_id).where(containers.c.id == container_id)
                ).first()
            if row is None:
                raise AuthError("the container token names an unknown container")
            account_id = str(row.account_id)
            state.auth.container_accounts[container_id] = account_id
        return Principal(account_id, "container", container_id=container_id)
    digest = hash_token(token)
    cached = state.auth.token_cache.get(digest)
    now = time.monotonic()
    if cached is not None and cached[1] > now:
        account_id, scope, token_id = cached[0]
        return Principal(account_id, scope, token_id=token_id)
    with state.engine.connect() as conn:
        row = conn.execute(
            select(tokens.c.id, tokens.c.account_id, tokens.c.scope, tokens.c.revoked).where(
                tokens.c.hash == digest
            )
        ).first()
    if row is None or row.revoked:
        raise AuthError(
            "the token is not valid (unknown or revoked); check the token you use "
            "(CRUCIBLE_TOKEN, or the client config `crucible up` wrote in CRUCIBLE_HOME), or "
            "ask for a new one (`crucible token create`)"
        )
    if len(state.auth.token_cache) > 10_000:
        state.auth.token_cache.clear()
    state.auth.token_cache[digest] = ((row.account_id, row.scope, row.id), now + _TOKEN_CACHE_TTL_S)
    return Principal(row.account_id, row.scope, token_id=row.id)


def account_id_of(conn: Connection, name_or_id: str) -> str:
    """The id of the account with this id or name (an admin naming an account)."""
    found = conn.execute(
        select(accounts.c.id).where(or_(accounts.c.id == name_or_id, accounts.c.name == name_or_id))
    ).scalar()
    if found is None:
        raise NotFoundError(f"no account {name_or_id!r} (give its id, ac-..., or its name)")
    return str(found)


def own_account(conn: Connection, principal: Principal, name_or_id: str) -> str:
    """The id of the account a builder names, which must be its own (by id or name); any
    other is "no account", whether or not it exists (no existence oracle). Admins may name
    any account."""
    if principal.is_admin:
        return account_id_of(conn, name_or_id)
    if name_or_id != principal.account_id:
        name = conn.execute(
            select(accounts.c.name).where(accounts.c.id == principal.account_id)
        ).scalar()
        if name_or_id != name:
            raise NotFoundError(f"no account {name_or_id!r} (give its id, ac-..., or its name)")
    return principal.account_id
