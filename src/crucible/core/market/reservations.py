"""Reservations: blocks of devices held for a window, and what the clock does to them.

Rules (v1):

- A reservation takes ``nodes`` blocks of ``count`` devices of one GPU model, each block on
  one listed host, ranked by effective reserved price (``greenest``: carbon first). It costs
  the block hosts' reserved price per device-hour over the whole window, used or not.
- A device can go into the block if no other reservation holds it over an overlapping window
  and it is free, or held by a lease that will be gone by the window's start: a reserved
  lease whose own window ends by then, or an interruptible lease bidding *strictly less* than
  the reserved price (it is preempted; free devices are taken first, then the lowest bids).
  Devices under on-demand leases, or under bids at or above the reserved price, are never
  taken.
- From the moment it is bought, a reserved device takes no new lease from anyone but the
  reservation's owner, and the owner's leases use it only inside the window.
- One grace period before the window starts (at once, if that is already past), the
  interruptible leases still on the devices are preempted: SIGTERM then, SIGKILL at the
  window's start. A reservation bought to start sooner than one grace period from now gives
  them their full grace, so its devices may be busy for up to that long after its start.
- When the window ends, leases running inside it end (reason ``expired``) and the devices
  return to the market.
- CPU-only capacity is not sold as reservations in v1.
"""

from __future__ import annotations

import heapq
from dataclasses import replace

from crucible.core.market.decisions import (
    Advanced,
    Preemption,
    Refusal,
    ReservationDecision,
    ReservationGranted,
)
from crucible.core.market.leases import Lease, Reservation, ReservedBlock
from crucible.core.market.orders import ReserveRequest
from crucible.core.market.refusals import refuse_reservation
from crucible.core.market.state import (
    EV_END,
    EV_HOT,
    EV_START,
    MarketState,
    PoolState,
    ReservationState,
    end_lease,
    reindex,
)
from crucible.core.market.terms import CPU, EndReason, PreemptCause, Prefer, RefusalCode, Tier
from crucible.errors import ConflictError, InvalidRequestError

__all__ = ["advance", "apply_reservation", "decide_reservation"]


def _overlaps(r: Reservation, start: int, end: int) -> bool:
    return r.start_ms < end and start < r.end_ms


def _window_units(
    st: MarketState, pool: PoolState, req: ReserveRequest, price: int
) -> tuple[int, ...] | None:
    """``req.count`` devices of ``pool`` that can be reserved over the request's window."""
    free: list[int] = []
    ending: list[int] = []
    outbid: list[tuple[int, int, int]] = []  # (bid, -start, unit)
    for u in pool.units:
        if any(
            _overlaps(st.reservations[rid].reservation, req.start_ms, req.end_ms)
            for rid in pool.pins.get(u, ())
        ):
            continue
        lease_id = pool.held.get(u)
        if lease_id is None:
            free.append(u)
            continue
        lease = st.leases[lease_id]
        if lease.tier is Tier.RESERVED:
            if lease.ends_by_ms is not None and lease.ends_by_ms <= req.start_ms:
                ending.append(u)
        elif lease.tier is Tier.INTERRUPTIBLE and lease.price_micros_per_device_hour < price:
            outbid.append((lease.price_micros_per_device_hour, -lease.start_ms, u))
    ordered = free + ending + [u for _, _, u in sorted(outbid)]
    if len(ordered) < req.count:
        return None
    return tuple(sorted(ordered[: req.count]))


def _victims(st: MarketState, blocks: tuple[ReservedBlock, ...], model: str) -> list[Lease]:
    """Interruptible leases holding any device of ``blocks``, in block and device order."""
    out: dict[str, Lease] = {}
    for block in blocks:
        pool = st.pools[(block.host_id, model)]
        for u in block.devices:
            lease_id = pool.held.get(u)
            if lease_id is not None and lease_id not in out:
                lease = st.leases[lease_id]
                if lease.tier is Tier.INTERRUPTIBLE:
                    out[lease_id] = lease
    return list(out.values())


def _price_of(r: Reservation, host_id: str) -> int:
    return next(b.price_micros_per_device_hour for b in r.blocks if b.host_id == host_id)


def _hours(ms: int) -> str:
    return f"{ms / 3_600_000:.4g}"


def decide_reservation(st: MarketState, req: ReserveRequest, now: int) -> ReservationDecision:
    """Decide a reservation against the current state without changing it."""
    st.check_no_events_due(now)
    rules = st.rules
    if req.reservation_id in st.reservations:
        raise ConflictError(f"reservation {req.reservation_id} already exists")
    if req.model == CPU:
        return Refusal(
            RefusalCode.NOT_RESERVABLE,
            "CPU-only capacity cannot be reserved (v1); reserve GPUs, or lease CPU on-demand.",
        )
    if req.start_ms < now:
        raise InvalidRequestError(f"the reservation window starts in the past ({req.start_ms})")
    if req.end_ms - req.start_ms > rules.max_reservation_ms:
        raise InvalidRequestError(
            f"a reservation window may last at most {rules.max_reservation_ms // 3_600_000} h"
        )
    window = req.end_ms - req.start_ms
    if window < rules.min_reservation_ms:
        raise InvalidRequestError(
            f"a reservation window lasts at least {_hours(rules.min_reservation_ms)} h; "
            "for less, lease on demand"
        )
    if req.start_ms - now > rules.max_reservation_lead_ms:
        raise InvalidRequestError(
            "a reservation may start at most "
            f"{rules.max_reservation_lead_ms // 86_400_000} days ahead"
        )
    if req.start_ms - now > max(window, rules.min_reservation_ms):
        # Its devices are held from now on: an unpaid wait longer than the paid window would
        # let a cheap, far-off reservation keep a host's GPUs from everyone.
        raise InvalidRequestError(
            f"a reservation may start at most as far ahead as it lasts: this one lasts "
            f"{_hours(window)} h and starts in {_hours(req.start_ms - now)} h (its devices are "
            "held for you from now on); start it sooner, or make it longer"
        )
    book = st.books.get(req.model)
    blocks: list[ReservedBlock] = []
    if book is not None:
        kind = "rsv_g" if req.prefer is Prefer.GREENEST else "rsv"
        used: set[str] = set()
        for key in book.ranks[kind].at_least(req.count):
            pool = st.pools[(key[2], req.model)]
            spec = pool.host.spec
            offer = pool.offer
            assert offer is not None
            if (
                spec.host_id in used
                or (req.region is not None and spec.region != req.region)
                or spec.reliability_ppm < req.min_reliability_ppm
                or not spec.admits(req.account, verified=req.verified)
                or (req.max_price is not None and offer.reserved > req.max_price)
            ):
                continue
            units = _window_units(st, pool, req, offer.reserved)
            if units is None:
                continue
            blocks.append(ReservedBlock(spec.host_id, units, offer.reserved))
            used.add(spec.host_id)
            if len(blocks) == req.nodes:
                break
    if len(blocks) < req.nodes:
        return refuse_reservation(st, req)
    reservation = Reservation(
        req.reservation_id, req.account, req.model, tuple(blocks), req.start_ms, req.end_ms
    )
    preemptions: tuple[Preemption, ...] = ()
    if req.start_ms - rules.grace_ms <= now:
        preemptions = tuple(
            _preemption(v, reservation, now, rules.grace_ms)
            for v in _victims(st, reservation.blocks, req.model)
        )
        usable = now + rules.grace_ms
        if preemptions and reservation.start_ms < usable:
            # Its devices are free only once the preempted leases' grace is over: what it
            # costs starts there, so that neither side pays for the grace (a "start now"
            # reservation paid for it, unable to use it). The window is as asked: leases in
            # it are granted now and start when the devices are free.
            reservation = replace(reservation, paid_from_ms=usable)
    return ReservationGranted(reservation, preemptions, now, st.version)


def _preemption(victim: Lease, r: Reservation, now: int, grace_ms: int) -> Preemption:
    return Preemption(
        lease=victim.ended(now, EndReason.PREEMPTED),
        notice_ms=now,
        deadline_ms=now + grace_ms,
        cause=PreemptCause.RESERVATION,
        by_id=r.reservation_id,
        by_price=_price_of(r, victim.host_id),
    )


def apply_reservation(st: MarketState, decision: ReservationGranted) -> None:
    """Carry out a granted reservation computed from the current state: pin its devices,
    schedule its notice, start and end, and process whichever of those are already due."""
    if decision.version != st.version:
        raise ConflictError(
            "the market changed since this reservation was decided; decide again "
            f"(decided at version {decision.version}, now {st.version})"
        )
    st.check_time(decision.at_ms)
    r = decision.reservation
    st.reservations[r.reservation_id] = ReservationState(r)
    st.account_reservations.setdefault(r.account, []).append(r.reservation_id)
    for block in r.blocks:
        pool = st.pools[(block.host_id, r.model)]
        for u in block.devices:
            pool.pins.setdefault(u, []).append(r.reservation_id)
        reindex(st, pool)
    st.push_event(r.start_ms - st.rules.grace_ms, EV_HOT, r.reservation_id)
    st.push_event(r.start_ms, EV_START, r.reservation_id)
    st.push_event(r.end_ms, EV_END, r.reservation_id)
    st.version += 1
    done = advance(st, decision.at_ms)
    if done.preemptions != decision.preemptions:
        raise AssertionError("reservation preemptions differ from the decision")


def advance(st: MarketState, now: int) -> Advanced:
    """Process every reservation event due at or before ``now``."""
    st.check_time(now)
    preemptions: list[Preemption] = []
    expired: list[Lease] = []
    started: list[str] = []
    ended: list[str] = []
    grace = st.rules.grace_ms
    while st.events and st.events[0][0] <= now:
        at, kind, _, rid = heapq.heappop(st.events)
        rs = st.reservations[rid]
        r = rs.reservation
        if kind == EV_HOT:
            rs.hot = True
            for victim in _victims(st, r.blocks, r.model):
                p = _preemption(victim, r, now, grace)
                end_lease(st, victim.lease_id, now, EndReason.PREEMPTED, p.deadline_ms)
                preemptions.append(p)
        elif kind == EV_START:
            rs.active = True
            started.append(rid)
        else:
            assert kind == EV_END
            for block in r.blocks:
                pool = st.pools[(block.host_id, r.model)]
                for lease_id in sorted(pool.leases):
                    if st.leases[lease_id].reservation_id == rid:
                        expired.append(end_lease(st, lease_id, at, EndReason.EXPIRED))
                for u in block.devices:
                    pins = pool.pins[u]
                    pins.remove(rid)
                    if not pins:
                        del pool.pins[u]
                reindex(st, pool)
            del st.reservations[rid]
            mine = st.account_reservations[r.account]
            mine.remove(rid)
            if not mine:
                del st.account_reservations[r.account]
            ended.append(rid)
    st.now_ms = now
    if preemptions or expired or started or ended:
        st.version += 1
    return Advanced(tuple(preemptions), tuple(expired), tuple(started), tuple(ended))
