"""Accounts and tokens."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.protocol.accounts import (
    AccountCreate,
    AccountInfo,
    AccountUpdate,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from crucible.server.api.deps import Builder, Caller, RequestKey, State
from crucible.server.services import accounts as svc
from crucible.server.services import request_keys

router = APIRouter(prefix="/v1", tags=["accounts"])


@router.post("/accounts", status_code=201)
async def create_account(
    req: AccountCreate, who: Builder, state: State, key: RequestKey = None
) -> AccountInfo:
    keyed = request_keys.keyed(who, key, "POST /v1/accounts", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = svc.create_account(conn, who, req.name, now)
        request_keys.keep(conn, keyed, 201, info)
    return info


@router.patch("/accounts/{account}")
def update_account(account: str, req: AccountUpdate, who: Builder, state: State) -> AccountInfo:
    """Approve an account as a provider, or take the approval back (admin): its fully
    isolated hosts run other accounts' work only while it is one."""
    with state.engine.begin() as conn:
        info, keys = svc.update_account(conn, who, account, req, state.clock.now_ms())
    state.wakeups.notify_many(keys)  # the hosts told to stop others' containers
    state.wakeups.kick_scheduler()  # hosts opened or closed to other accounts' work
    return info


@router.get("/accounts/me")
async def me(who: Caller, state: State) -> AccountInfo:
    with state.engine.begin() as conn:
        return svc.get_account(conn, who.account_id)


@router.post("/tokens", status_code=201)
async def create_token(req: TokenCreate, who: Builder, state: State) -> TokenCreated:
    # Not keyed (services/request_keys.py): its answer holds the new token, which the store
    # keeps only hashed; a lost answer is a token to revoke (`crucible token ls`).
    with state.engine.begin() as conn:
        return svc.create_token(conn, who, req, state.clock.now_ms())


@router.get("/tokens")
async def list_tokens(who: Builder, state: State) -> list[TokenInfo]:
    with state.engine.begin() as conn:
        return svc.list_tokens(conn, who)


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(
    token_id: str, who: Builder, state: State, force: bool = Query(False)
) -> None:
    """Revoke a token of the caller's account; its own token, or the exchange's last admin
    token, only with ``force=true`` (409 otherwise: either locks someone out)."""
    with state.engine.begin() as conn:
        svc.revoke_token(conn, state, who, token_id, force)
