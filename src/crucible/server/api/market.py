"""The market: host offers and profiles, the book, quotes, reservations, credits,
statements and earnings. Thin: each route calls one service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from crucible.errors import InvalidRequestError
from crucible.protocol.common import MAX_WIRE_INT
from crucible.protocol.market import (
    BookInfo,
    CreditGrant,
    CreditInfo,
    DailyCap,
    EarningsReport,
    HostMarketInfo,
    HostProfileUpdate,
    OfferUpdate,
    QuoteInfo,
    QuoteRequest,
    ReservationInfo,
    ReserveCreate,
)
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.billing import statements
from crucible.server.billing.period import Period
from crucible.server.forward import to_leader
from crucible.server.services import offers, orders, request_keys
from crucible.server.services.accounts import own_account
from crucible.server.store.tables import hosts

router = APIRouter(prefix="/v1", tags=["market"])


@router.get("/market/hosts")
def market_hosts(who: Builder, state: State) -> list[HostMarketInfo]:
    with state.engine.connect() as conn:
        return offers.list_host_market(conn, state.settings)


@router.put("/hosts/{host_id}/offers")
def put_offer(host_id: str, req: OfferUpdate, who: Builder, state: State) -> HostMarketInfo:
    with state.engine.begin() as conn:
        offers.set_offer(conn, who, host_id, req, state.clock.now_ms())
        row = conn.execute(select(hosts).where(hosts.c.id == host_id)).one()
        info = offers.host_market_info(conn, row, state.settings)
    state.market.offers_changed()
    state.wakeups.kick_scheduler()
    return info


@router.patch("/hosts/{host_id}/profile")
def patch_profile(
    host_id: str, req: HostProfileUpdate, who: Builder, state: State
) -> HostMarketInfo:
    with state.engine.begin() as conn:
        offers.set_profile(conn, who, host_id, req, state.clock.now_ms())
        row = conn.execute(select(hosts).where(hosts.c.id == host_id)).one()
        info = offers.host_market_info(conn, row, state.settings)
    state.market.offers_changed()
    state.wakeups.kick_scheduler()
    return info


@router.delete("/hosts/{host_id}", status_code=204)
def delete_host(host_id: str, who: Builder, state: State) -> None:
    """Remove a host whose agent stopped (offline or lost) and that runs and is reserved for
    nothing: it leaves the host lists and the market."""
    with state.engine.begin() as conn:
        offers.remove_host(conn, who, host_id, state.clock.now_ms())
    state.market.offers_changed()


@router.get("/earnings")
def get_earnings(
    who: Builder, state: State, by: str = "lease", host_id: str | None = None
) -> EarningsReport:
    with state.engine.connect() as conn:
        return offers.earnings(conn, who, by, host_id)


@router.get("/market/book")
def get_book(who: Builder, state: State, gpu: str | None = None) -> list[BookInfo]:
    now = state.clock.now_ms()
    with state.engine.connect() as conn:
        orders.fresh(conn, state.market, now)
    return orders.book(state.market, gpu, now, who.account_id)


@router.post("/market/quote")
def post_quote(req: QuoteRequest, who: Builder, state: State) -> QuoteInfo:
    state.limits.take(state.limits.quote, who)
    now = state.clock.now_ms()
    with state.engine.connect() as conn:
        orders.fresh(conn, state.market, now)
    return orders.quote(state.market, who, req, now)


@router.post("/reservations")
def post_reservation(
    req: ReserveCreate, who: Builder, state: State, request: Request, key: RequestKey = None
) -> ReservationInfo:
    forwarded = to_leader(state, request.headers.get("authorization"), req, key)
    if forwarded is not None:
        return forwarded
    keyed = request_keys.keyed(who, key, "POST /v1/reservations", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info, keys = orders.reserve(conn, state.market, state.settings, who, req, now)
        request_keys.keep(conn, keyed, 200, info)
    # Preempted containers' agents and calls are woken; the scheduler places the requeued
    # calls on its next periodic tick (a kick per reservation would contend for the store).
    state.wakeups.notify_many(keys)
    return info


@router.get("/reservations")
def get_reservations(who: Builder, state: State) -> list[ReservationInfo]:
    with state.engine.connect() as conn:
        return orders.list_reservations(conn, who, state.clock.now_ms())


@router.post("/credits/grants")
def post_grant(req: CreditGrant, who: Builder, state: State, key: RequestKey = None) -> CreditInfo:
    keyed = request_keys.keyed(who, key, "POST /v1/credits/grants", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = _as_enforced(statements.grant(conn, who, req, now), state)
        request_keys.keep(conn, keyed, 200, info)
    if info.ok:  # let the account back in now rather than at the next check
        state.credit.checked.pop(info.account_id, None)
        state.leader.credit_blocked.pop(info.account_id, None)
    state.wakeups.kick_scheduler()
    return info


@router.put("/credits/cap")
def put_cap(req: DailyCap, who: Builder, state: State) -> CreditInfo:
    with state.engine.begin() as conn:
        return _as_enforced(statements.set_daily_cap(conn, who, req, state.clock.now_ms()), state)


@router.get("/credits")
def get_credits(who: Builder, state: State, account: str | None = None) -> CreditInfo:
    with state.engine.connect() as conn:
        account_id = who.account_id if account is None else own_account(conn, who, account)
        return statements.credit_info(
            conn, account_id, state.clock.now_ms(), required=state.settings.require_credits
        )


def _as_enforced(info: CreditInfo, state: State) -> CreditInfo:
    """``info`` saying whether this exchange refuses work without credit."""
    return statements.enforced(info, state.settings.require_credits)


@router.get("/statement", response_model=None)
def get_statement(
    who: Builder,
    state: State,
    kind: str = "entries",
    app_id: str | None = None,
    format: str = "json",
    since_ms: int | None = Query(default=None, ge=0, le=MAX_WIRE_INT),
    until_ms: int | None = Query(default=None, ge=0, le=MAX_WIRE_INT),
) -> Any:
    if format not in ("json", "csv"):
        raise InvalidRequestError(f"format must be json or csv, not {format[:40]!r}")
    period = Period.of(since_ms, until_ms)
    with state.engine.connect() as conn:
        lines = statements.statement(conn, who, kind, app_id, period)
    if format == "csv":
        return PlainTextResponse(statements.to_csv(lines), media_type="text/csv")
    return lines
