"""What renters ask the market directly: the book, quotes, and reservations.

Quotes and the book read the live market under its lock; a reservation is decided by the
market and written (with its charge, paid up front for the whole window, and the stops of
any interruptible leases it preempts at once) in one transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from sqlalchemy import Connection, select

from crucible.core.ledger import (
    MS_PER_DAY,
    EntryKind,
    MeteredInterval,
    charge_postings,
    format_usd,
)
from crucible.core.market import (
    CPU,
    LeaseRequest,
    Prefer,
    Quote,
    Refusal,
    Reservation,
    ReservationGranted,
    ReserveRequest,
    Tier,
)
from crucible.core.metering import interval_cost
from crucible.errors import InsufficientCreditError, InvalidRequestError, MarketRefusedError
from crucible.protocol.gpus import parse_gpu_request
from crucible.protocol.ids import new_id
from crucible.protocol.market import (
    BookInfo,
    ClearingInfo,
    LevelInfo,
    QuoteInfo,
    QuoteRequest,
    QuoteTerms,
    ReservationInfo,
    ReserveCreate,
)
from crucible.server.auth import Principal
from crucible.server.billing.entries import (
    EntryContext,
    account_credit,
    post_entry,
    spent_on_day,
)
from crucible.server.services.containers import carry_out_advance, carry_out_preemptions
from crucible.server.services.market import LiveMarket, reservation_of_row
from crucible.server.store.tables import reservations
from crucible.settings import Settings

__all__ = ["book", "fresh", "list_reservations", "quote", "reserve"]

MS_PER_HOUR = 3_600_000


def _model_and_count(gpu: str) -> tuple[str, int]:
    if gpu.strip().lower() == CPU:
        raise InvalidRequestError(
            "CPU-only capacity is sold on demand to CPU functions, not quoted or reserved; "
            "ask for a GPU model such as '4xH100'"
        )
    req = parse_gpu_request(gpu)
    return req.model, req.count


# The scheduler syncs the market on every tick; API reads sync it themselves only when no
# tick did for this long (no scheduler in this process, or one stuck on a long tick).
_FRESH_MS = 10_000


def fresh(conn: Connection, live: LiveMarket, now_ms: int) -> None:
    """Make sure the market reflects the store (the scheduler normally keeps it so)."""
    with live.lock:
        live.sync_if_stale(conn, now_ms, _FRESH_MS)


def quote(live: LiveMarket, principal: Principal, req: QuoteRequest, now_ms: int) -> QuoteInfo:
    model, count = _model_and_count(req.gpu)
    lease_req = LeaseRequest(
        account=principal.account_id,
        models=(model,),
        count=count,
        nodes=req.nodes,
        tier=Tier(req.tier),
        bid=req.bid_micros,  # with another tier: refused, not dropped in silence
        max_price=req.max_price_micros,
        region=req.region,
        min_reliability_ppm=req.min_reliability_ppm,
        prefer=Prefer(req.prefer),
        max_carbon_g_per_kwh=req.max_carbon_g_per_kwh,
        verified=req.verified,
    )
    with live.lock:
        now = max(now_ms, live.market.now_ms)
        q = live.market.quote(lease_req, now)
        # Inside the renter's reservations a node costs nothing more: say so, and what the
        # tier asked for would cost without them.
        outside = None
        if q.reservations and lease_req.tier is not Tier.RESERVED:
            outside = live.market.quote(replace(lease_req, use_reservations=False), now)
    info = _quote_info(q)
    if outside is not None:
        terms = _quote_info(outside).model_dump(exclude={"reservations", "without_reservations"})
        info.without_reservations = QuoteTerms(**terms)
    return info


def _quote_info(q: Quote) -> QuoteInfo:
    if not q.available:
        assert q.refusal is not None
        return QuoteInfo(
            available=False,
            refusal=q.refusal.code.value,
            message=q.refusal.message,
            min_winning_bid_micros=q.refusal.min_winning_bid,
        )
    return QuoteInfo(
        available=True,
        model=q.model,
        tier=q.tier.value if q.tier else None,
        price_micros=q.price_micros_per_device_hour,
        rate_micros_per_hour=q.rate_micros_per_hour,
        hosts=list(q.hosts),
        preempts=q.preempts,
        reservations=list(q.reservations),
    )


def book(
    live: LiveMarket, model: str | None, now_ms: int, account: str, depth: int = 10
) -> list[BookInfo]:
    """The book of one GPU model, or of every model the market has, as ``account`` may buy
    from it (hosts that run only their owner's work are left out but the account's own)."""
    with live.lock:
        market = live.market
        types = [parse_gpu_request(model).model] if model else market.device_types()
        now = max(now_ms, market.now_ms)
        views = [market.book(t, now, depth, for_account=account) for t in types if t != CPU]
    return [
        BookInfo(
            device_type=v.device_type,
            at_ms=v.at_ms,
            asks=[LevelInfo(price_micros=x.price, devices=x.devices) for x in v.asks],
            interruptible_minimums=[
                LevelInfo(price_micros=x.price, devices=x.devices) for x in v.interruptible_minimums
            ],
            standing_bids=[
                LevelInfo(price_micros=x.price, devices=x.devices) for x in v.standing_bids
            ],
            recent=[
                ClearingInfo(
                    at_ms=c.at_ms,
                    tier=c.tier.value,
                    price_micros=c.price,
                    devices=c.devices,
                    host_id=c.host_id,
                )
                for c in v.recent
            ],
            free_devices=v.free_devices,
            listed_devices=v.listed_devices,
            leased={t.value: n for t, n in v.leased.items()},
        )
        for v in views
    ]


def _info(r: Reservation) -> ReservationInfo:
    return ReservationInfo(
        id=r.reservation_id,
        model=r.model,
        count=r.count,
        nodes=len(r.blocks),
        hosts=[b.host_id for b in r.blocks],
        start_ms=r.start_ms,
        end_ms=r.end_ms,
        price_micros=max(b.price_micros_per_device_hour for b in r.blocks),
        cost_micros=r.cost_micros,
    )


def reserve(
    conn: Connection,
    live: LiveMarket,
    settings: Settings,
    principal: Principal,
    req: ReserveCreate,
    now_ms: int,
) -> tuple[ReservationInfo, list[str]]:
    """Buy a reserved block; returns it and wake-up keys (containers it preempted)."""
    model, count = _model_and_count(req.gpu)
    length_ms = round(req.hours * MS_PER_HOUR)
    if length_ms <= 0:
        raise InvalidRequestError(f"a reservation's window must last longer than {req.hours} h")
    rid = new_id("rs")
    keys: list[str] = []
    with live.lock:
        live.sync_if_stale(conn, now_ms, _FRESH_MS)
        # "Now" once the lock is held: a request that waited behind another (or a tick)
        # must not find its own "start now" in the past.
        now = max(now_ms, live.market.now_ms)
        end_ms = req.start_ms + length_ms
        if end_ms <= now:
            ended = dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise InvalidRequestError(
                f"the reservation's window ended at {ended}, in the past: start it now or later"
            )
        if req.start_ms < now:  # "now" as the client's clock read it: the hours from now
            end_ms = now + length_ms
        rreq = ReserveRequest(
            reservation_id=rid,
            account=principal.account_id,
            model=model,
            count=count,
            start_ms=max(req.start_ms, now),
            end_ms=end_ms,
            nodes=req.nodes,
            max_price=req.max_price_micros,
            region=req.region,
            min_reliability_ppm=req.min_reliability_ppm,
            prefer=Prefer(req.prefer),
            verified=req.verified,
        )
        # Due window events first (decisions need them processed); act on them here, since
        # advancing takes them off the market's queue.
        keys += carry_out_advance(conn, live.market.advance(now), now)
        decision = live.market.decide_reservation(rreq, now)
        if isinstance(decision, Refusal):
            # The market learns of hosts at the scheduler's ticks: one that registered (or
            # was priced) since, here or through another replica, is already in the store.
            # A refusal is rare: read every host again before giving it.
            live.sync(conn, now)
            keys += carry_out_advance(conn, live.market.advance(now), now)
            decision = live.market.decide_reservation(rreq, now)
        if isinstance(decision, Refusal):
            raise MarketRefusedError(decision.message)
        assert isinstance(decision, ReservationGranted)
        r = decision.reservation
        if settings.require_credits:
            _check_credit_for(conn, principal.account_id, r.cost_micros, r.start_ms, now)
        conn.execute(
            reservations.insert().values(
                id=rid,
                account_id=principal.account_id,
                model=model,
                count=count,
                blocks=[
                    {
                        "host_id": b.host_id,
                        "devices": list(b.devices),
                        "price": b.price_micros_per_device_hour,
                    }
                    for b in r.blocks
                ],
                start_ms=r.start_ms,
                end_ms=r.end_ms,
                created_ms=now,
                metered_until_ms=r.end_ms,
                metered_cost_micros=r.cost_micros,
            )
        )
        fee_ppm = round(settings.platform_fee * 1_000_000)
        for i, b in enumerate(r.blocks):
            # Paid up front for the whole window, used or not (Reservation.cost_micros is
            # the sum of these).
            paid = r.billed_from_ms
            cost = interval_cost(b.rate_micros_per_hour, paid, paid, r.end_ms)
            interval = MeteredInterval(
                key=f"rs:{rid}:{i}",
                renter=principal.account_id,
                host=b.host_id,
                meter=rid,
                start_ms=paid,
                end_ms=r.end_ms,
                cost_micros=cost,
            )
            post_entry(
                conn,
                interval.key,
                EntryKind.CHARGE,
                now,
                charge_postings(interval, 0, fee_ppm),
                memo=f"reservation {rid}: {count}x{model} on {b.host_id}",
                context=EntryContext(
                    renter=principal.account_id,
                    host_id=b.host_id,
                    meter=rid,
                    start_ms=r.start_ms,
                    end_ms=r.end_ms,
                    cost_micros=cost,
                ),
            )
        live.market.apply(decision)
        keys += carry_out_preemptions(conn, decision.preemptions)
    return _info(r), keys


def _check_credit_for(
    conn: Connection, account_id: str, cost: int, start_ms: int, now_ms: int
) -> None:
    """Refuse a reservation the balance does not cover, or that takes the spend of the day
    its window starts (the day its charge counts toward) past the account's daily cap."""
    credit = account_credit(conn, account_id, now_ms)
    if not credit.ok or credit.balance < cost:
        raise InsufficientCreditError(
            f"the reservation costs {format_usd(cost)} and the balance is "
            f"{format_usd(credit.balance)}; ask the operator for credits"
        )
    if credit.daily_cap is None:
        return
    day = start_ms // MS_PER_DAY
    spent = (
        credit.spent_today if day == now_ms // MS_PER_DAY else spent_on_day(conn, account_id, day)
    )
    if spent + cost > credit.daily_cap:
        date = dt.datetime.fromtimestamp(day * MS_PER_DAY / 1000, dt.UTC)
        raise InsufficientCreditError(
            f"the reservation costs {format_usd(cost)}, which would take the spend of "
            f"{date:%Y-%m-%d} (UTC, the day its window starts) to "
            f"{format_usd(spent + cost)}, past the daily cap of "
            f"{format_usd(credit.daily_cap)}: raise the cap (`crucible credits cap`) or "
            "reserve less"
        )


def list_reservations(conn: Connection, principal: Principal, now_ms: int) -> list[ReservationInfo]:
    rows = conn.execute(
        select(reservations)
        .where(reservations.c.account_id == principal.account_id, reservations.c.end_ms > now_ms)
        .order_by(reservations.c.start_ms)
    )
    return [_info(reservation_of_row(r)) for r in rows]
