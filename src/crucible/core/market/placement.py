"""Lease decisions: where a request goes, at what price, and whom it preempts.

A request is served by the first of these that places *every* node (each node on its own
host, all nodes of one device type):

1. free capacity, trying the device types in the request's order (``fastest``: fastest
   first). Each node first takes devices of the renter's own active reservations of that
   type, then the best-ranked fitting offer with enough free devices (see
   :mod:`~crucible.core.market.rules` for the ranking);
2. only then, preemption, again type by type: a node that finds no free capacity preempts
   running interruptible leases whose bid is *strictly below* the price it would pay (the
   host's ask for on-demand, its bid for interruptible). It takes the host where the highest
   bid it must preempt is lowest; ties by the same ranking. On that host it preempts the
   lowest bids first (ties: the most recently started, which has lost the least work) until
   enough devices are free. On-demand and reserved leases are never preempted, and neither
   is a bid equal to or above the new price.

Preemption is the last resort: a request never preempts anyone while any type on its list has
free capacity it accepts. Preempted leases stop being metered at once; the new lease starts
(and is metered) from their SIGKILL deadline.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from crucible.core.market.decisions import LeaseDecision, LeaseGranted, Preemption
from crucible.core.market.index import RankKey, price_band
from crucible.core.market.leases import Lease, Reservation
from crucible.core.market.offers import Offer
from crucible.core.market.orders import LeaseRequest
from crucible.core.market.refusals import refuse_lease
from crucible.core.market.rules import effective_price, under_carbon_cap
from crucible.core.market.state import (
    BANDED_KINDS,
    MarketState,
    PoolState,
    add_lease,
    end_lease,
)
from crucible.core.market.terms import CPU, EndReason, PreemptCause, Prefer, Tier
from crucible.errors import ConflictError

__all__ = ["apply_lease", "decide_lease", "model_order", "rank_kind", "unit_price"]


@dataclass(slots=True)
class NodePlan:
    pool: PoolState
    units: tuple[int, ...]
    tier: Tier
    price: int
    memory_price: int
    reservation: Reservation | None = None
    victims: tuple[Lease, ...] = ()


def model_order(st: MarketState, req: LeaseRequest) -> list[str]:
    """The device types in the order they are tried."""
    if req.prefer is not Prefer.FASTEST:
        return list(req.models)
    speed = st.rules.model_speed
    return sorted(req.models, key=lambda m: -speed.get(m, -1))


def rank_kind(req: LeaseRequest) -> str:
    """Which ranking index serves the request (see state.FREE_KINDS)."""
    if req.tier is Tier.ON_DEMAND:
        base = "od"
    elif req.bid is None:
        base = "int"
    else:
        base = "rel"
    return base + "_g" if req.prefer is Prefer.GREENEST else base


def unit_price(req: LeaseRequest, offer: Offer) -> int | None:
    """What the request would pay per unit-hour under ``offer``, or ``None`` when the offer
    does not accept it (a bid below the minimum) or it exceeds ``max_price``."""
    if req.tier is Tier.ON_DEMAND:
        price = offer.on_demand
    elif req.bid is None:
        price = offer.interruptible_min
    elif req.bid >= offer.interruptible_min:
        price = req.bid
    else:
        return None
    if req.max_price is not None and price > req.max_price:
        return None
    return price


class _Barred:
    """Hosts a request's next node may not use: those its earlier nodes took, and a caller's
    ``avoid`` that is not a plain collection (asked with ``in`` only, never iterated)."""

    __slots__ = ("avoid", "taken")

    def __init__(self, avoid: Container[str]) -> None:
        self.taken: set[str] = set()
        self.avoid = avoid

    def __contains__(self, host_id: str) -> bool:
        return host_id in self.taken or host_id in self.avoid

    def add(self, host_id: str) -> None:
        self.taken.add(host_id)


# A plain set when ``avoid`` is one (membership stays a C lookup on the hot path).
_Used = set[str] | _Barred


def _barred(avoid: Container[str]) -> _Used:
    if isinstance(avoid, (set, frozenset, list, tuple)):
        return set(avoid)
    return _Barred(avoid)


def host_fits(req: LeaseRequest, pool: PoolState, used: _Used) -> bool:
    spec = pool.host.spec
    return (
        spec.host_id not in used
        and (req.region is None or spec.region == req.region)
        and spec.reliability_ppm >= req.min_reliability_ppm
        and under_carbon_cap(req.max_carbon_g_per_kwh, spec.carbon_g_per_kwh)
        and spec.admits(
            req.account, verified=req.verified, network=req.network, cluster=req.cluster
        )
    )


def _memory_price(req: LeaseRequest, offer: Offer) -> int:
    return offer.memory_price(req.tier) if req.models == (CPU,) else 0


def _from_reservations(
    st: MarketState, req: LeaseRequest, model: str, used: _Used
) -> NodePlan | None:
    """Devices of the renter's active reservations of ``model`` (they are paid for anyway,
    so ``max_price``, region and reliability do not apply; what the code may run on does:
    the carbon cap, verified hosts, network and cluster needs)."""
    for rid in st.account_reservations.get(req.account, ()):
        rs = st.reservations[rid]
        r = rs.reservation
        if not rs.active or r.model != model:
            continue
        for block in r.blocks:
            if block.host_id in used:
                continue
            pool = st.pools[(block.host_id, model)]
            # A host that stopped isolating fully since the reservation runs its owner only.
            spec = pool.host.spec
            if (
                not pool.host.online
                or not spec.admits(
                    req.account, verified=req.verified, network=req.network, cluster=req.cluster
                )
                or not under_carbon_cap(req.max_carbon_g_per_kwh, spec.carbon_g_per_kwh)
            ):
                continue
            avail = [u for u in block.devices if u not in pool.held]
            if len(avail) >= req.count:
                return NodePlan(
                    pool,
                    tuple(avail[: req.count]),
                    Tier.RESERVED,
                    block.price_micros_per_device_hour,
                    0,
                    reservation=r,
                )
    return None


def _early_stop(req: LeaseRequest, kind: str, key: RankKey) -> bool:
    """Past this key no offer can fit (the list is sorted on the key's first element)."""
    if kind == "rel":
        return -key[0] < req.min_reliability_ppm
    if kind in ("od", "int") and req.max_price is not None and req.min_reliability_ppm > 0:
        # effective price <= ceil(max_price * 1e6 / reliability) <= the bound below
        return key[0] > effective_price(req.max_price, req.min_reliability_ppm)
    return False


def _scan(
    st: MarketState,
    req: LeaseRequest,
    model: str,
    kind: str,
    keys: Sequence[RankKey],
    used: _Used,
) -> tuple[tuple[int, int] | None, list[PoolState]]:
    """The best rank among fitting pools of one sorted list, and the pools sharing it (at
    most ``locality_scan`` of them)."""
    best_rank: tuple[int, int] | None = None
    candidates: list[PoolState] = []
    for key in keys:
        if best_rank is not None and key[:2] != best_rank:
            break
        pool = st.pools[(key[2], model)]
        offer = pool.offer
        assert offer is not None
        if (
            not host_fits(req, pool, used)
            or unit_price(req, offer) is None
            or pool.free_memory < req.memory_gib
        ):
            if best_rank is None and _early_stop(req, kind, key):
                break
            continue
        best_rank = (key[0], key[1])
        candidates.append(pool)
        if len(candidates) >= st.rules.locality_scan:
            break
    return best_rank, candidates


def _free(st: MarketState, req: LeaseRequest, model: str, used: _Used) -> NodePlan | None:
    book = st.books.get(model)
    if book is None:
        return None
    kind = rank_kind(req)
    if kind in BANDED_KINDS:
        assert req.bid is not None
        lists = book.banded[kind].up_to(price_band(req.bid), req.count)
    else:
        lists = [book.ranks[kind].at_least(req.count)]
    best_rank: tuple[int, int] | None = None
    candidates: list[PoolState] = []
    for keys in lists:
        rank, found = _scan(st, req, model, kind, keys, used)
        if rank is None or (best_rank is not None and rank > best_rank):
            continue
        if best_rank is None or rank < best_rank:
            best_rank, candidates = rank, found
        else:
            candidates.extend(found)
    if best_rank is None:
        return None
    # The renter's own hosts are always considered for the locality tie-break.
    for host_id in st.account_hosts.get(req.account, {}):
        own = st.pools.get((host_id, model))
        if (
            own is not None
            and own.ix_keys is not None
            and own.ix_free >= req.count
            and own.ix_keys[kind][:2] == best_rank
            and own not in candidates
            and host_fits(req, own, used)
            and own.offer is not None
            and unit_price(req, own.offer) is not None
            and own.free_memory >= req.memory_gib
        ):
            candidates.append(own)
    best = min(candidates, key=lambda p: (st.locality(req.account, p.host), p.ix_free, p.host_id))
    assert best.offer is not None
    price = unit_price(req, best.offer)
    assert price is not None
    return NodePlan(
        best,
        tuple(best.free_units()[: req.count]),
        req.tier,
        price,
        _memory_price(req, best.offer),
    )


@dataclass(slots=True)
class _Progress:
    units: list[int]
    memory: int
    victims: list[Lease]
    done: bool = False


def _preempt(st: MarketState, req: LeaseRequest, model: str, used: _Used) -> NodePlan | None:
    book = st.books.get(model)
    if book is None:
        return None
    walk = book.bids
    if req.tier is Tier.ON_DEMAND:
        cap = book.ask_pools.max()
    elif req.bid is None:
        # Paying each host's minimum, it can only preempt bids below that minimum.
        cap, walk = book.min_pools.max(), book.underwater
    else:
        cap = req.bid
    if cap is None:
        return None
    if req.max_price is not None:
        cap = min(cap, req.max_price)
    prices: dict[str, int | None] = {}  # host -> what the request pays there (None: unfit)
    progress: dict[str, _Progress] = {}
    reached: list[PoolState] = []
    level: int | None = None
    for bid, _, lease_id in walk:
        if bid >= cap or (level is not None and bid > level):
            break
        lease = st.leases[lease_id]
        pool = st.pool_of(lease)
        host_id = lease.host_id
        if host_id in prices:
            price = prices[host_id]
        else:
            price = (
                unit_price(req, pool.offer)
                if pool.offer is not None
                and pool.ix_keys is not None
                and host_fits(req, pool, used)
                else None
            )
            prices[host_id] = price
        if price is None or bid >= price:
            continue
        prog = progress.get(pool.host_id)
        if prog is None:
            prog = _Progress(pool.free_units(), pool.free_memory, [])
            progress[pool.host_id] = prog
        if prog.done:
            continue
        prog.units.extend(u for u in lease.devices if u not in pool.pins)
        prog.memory += lease.memory_gib
        prog.victims.append(lease)
        if len(prog.units) >= req.count and prog.memory >= req.memory_gib:
            prog.done = True
            reached.append(pool)
            level = bid
    if not reached:
        return None
    kind = rank_kind(req)

    def rank(p: PoolState) -> tuple[RankKey, int]:
        assert p.ix_keys is not None
        return (p.ix_keys[kind], st.locality(req.account, p.host))

    best = min(reached, key=rank)
    prog = progress[best.host_id]
    assert best.offer is not None
    price = unit_price(req, best.offer)
    assert price is not None
    return NodePlan(
        best,
        tuple(sorted(prog.units[: req.count])),
        req.tier,
        price,
        _memory_price(req, best.offer),
        victims=tuple(prog.victims),
    )


def _place_nodes(
    st: MarketState, req: LeaseRequest, model: str, allow_preempt: bool, avoid: Container[str]
) -> list[NodePlan] | None:
    used = _barred(avoid)  # a host serves one node, and none of the avoided ones
    plans: list[NodePlan] = []
    for _ in range(req.nodes):
        plan = _from_reservations(st, req, model, used) if req.use_reservations else None
        if plan is None and req.tier is not Tier.RESERVED:
            plan = _free(st, req, model, used)
            if plan is None and allow_preempt:
                plan = _preempt(st, req, model, used)
        if plan is None:
            return None
        used.add(plan.pool.host_id)
        plans.append(plan)
    return plans


def _grant(st: MarketState, req: LeaseRequest, plans: list[NodePlan], now: int) -> LeaseGranted:
    grace = st.rules.grace_ms
    cause = PreemptCause.ON_DEMAND if req.tier is Tier.ON_DEMAND else PreemptCause.OUTBID
    leases: list[Lease] = []
    preemptions: list[Preemption] = []
    for plan, lease_id in zip(plans, req.lease_ids(), strict=True):
        start = plan.pool.ready_at(plan.units, now)
        freed = {u for v in plan.victims for u in v.devices}
        if freed.intersection(plan.units):
            start = max(start, now + grace)
        r = plan.reservation
        leases.append(
            Lease(
                lease_id=lease_id,
                account=req.account,
                host_id=plan.pool.host_id,
                device_type=plan.pool.device_type,
                devices=plan.units,
                tier=plan.tier,
                price_micros_per_device_hour=plan.price,
                granted_ms=now,
                start_ms=start,
                memory_gib=req.memory_gib if r is None else 0,
                memory_price_micros_per_gib_hour=plan.memory_price,
                reservation_id=None if r is None else r.reservation_id,
                ends_by_ms=None if r is None else r.end_ms,
            )
        )
        preemptions.extend(
            Preemption(
                lease=v.ended(now, EndReason.PREEMPTED),
                notice_ms=now,
                deadline_ms=now + grace,
                cause=cause,
                by_id=lease_id,
                by_price=plan.price,
            )
            for v in plan.victims
        )
    return LeaseGranted(tuple(leases), tuple(preemptions), now, st.version)


def decide_lease(
    st: MarketState, req: LeaseRequest, now: int, avoid: Container[str] = ()
) -> LeaseDecision:
    """Decide a lease request against the current state without changing it. No node goes to
    a host in ``avoid`` (host ids the caller cannot use: the scheduler passes the hosts that
    lack the container's CPU or memory), by free capacity, reservation or preemption.
    ``avoid`` is only asked ``host_id in avoid`` (a set, list or tuple is copied into a set
    first), so a caller may pass a view that answers from its own state without listing the
    fleet."""
    st.check_no_events_due(now)
    for lease_id in req.lease_ids():
        if lease_id and lease_id in st.leases:
            raise ConflictError(f"lease {lease_id} already exists")
    models = model_order(st, req)
    for allow_preempt in (False, True):
        if allow_preempt and req.tier is Tier.RESERVED:
            break
        for model in models:
            plans = _place_nodes(st, req, model, allow_preempt, avoid)
            if plans is not None:
                return _grant(st, req, plans, now)
    return refuse_lease(st, req, models, now)


def apply_lease(st: MarketState, decision: LeaseGranted) -> None:
    """Carry out a granted decision computed from the current state."""
    if decision.version != st.version:
        raise ConflictError(
            "the market changed since this lease was decided; decide again "
            f"(decided at version {decision.version}, now {st.version})"
        )
    st.check_time(decision.at_ms)
    for p in decision.preemptions:
        end_lease(st, p.lease.lease_id, p.notice_ms, EndReason.PREEMPTED, p.deadline_ms)
    for lease in decision.leases:
        add_lease(st, lease)
    st.now_ms = decision.at_ms
    st.version += 1
