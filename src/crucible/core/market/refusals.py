"""Why a request was refused, in words a builder can act on.

This is the slow path: it runs only when no placement was found, and it looks at every host
of the requested types to say which constraint bound (no offer, too many devices per node,
the region or reliability asked, the price, the bid, or capacity).
"""

from __future__ import annotations

import datetime as dt

from crucible.core.ledger import format_usd
from crucible.core.market.decisions import Refusal
from crucible.core.market.orders import LeaseRequest, ReserveRequest
from crucible.core.market.rules import under_carbon_cap
from crucible.core.market.state import MarketState, PoolState
from crucible.core.market.terms import RefusalCode, Tier

__all__ = [
    "min_winning_bid",
    "no_cluster_net",
    "no_egress",
    "not_isolated",
    "refuse_lease",
    "refuse_reservation",
    "unverified",
    "with_winning_bid",
]


def _names(models: list[str] | tuple[str, ...]) -> str:
    return " or ".join(models)


def _utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _per_hour(micros: int) -> str:
    return f"{format_usd(micros)}/device-hour"


def _filters(region: str | None, min_reliability_ppm: int, max_carbon: int | None = None) -> str:
    parts = []
    if region is not None:
        parts.append(f"region={region}")
    if min_reliability_ppm:
        parts.append(f"min_reliability={min_reliability_ppm / 1_000_000:g}")
    if max_carbon is not None:
        parts.append(f"max_carbon_g_per_kwh={max_carbon}")
    return ", ".join(parts)


def _listed(st: MarketState, models: list[str] | tuple[str, ...]) -> list[PoolState]:
    return [p for m in models for p in st.pools_by_type.get(m, {}).values() if p.listed]


def _reserved_refusal(st: MarketState, req: LeaseRequest, now: int) -> Refusal:
    mine = [st.reservations[rid] for rid in st.account_reservations.get(req.account, ())]
    mine = [rs for rs in mine if rs.reservation.model in req.models]
    if not mine:
        detail = f"you hold no reservation of {_names(req.models)}"
    elif not any(rs.active for rs in mine):
        first = min(rs.reservation.start_ms for rs in mine)
        detail = f"your {_names(req.models)} reservations start at {first} (now {now})"
    else:
        detail = (
            f"no active {_names(req.models)} reservation of yours has {req.count} free "
            f"devices on one host for each of {req.nodes} node(s)"
        )
    return Refusal(
        RefusalCode.NO_RESERVATION,
        f"tier=reserved runs only inside your reservations, and {detail}. Reserve capacity "
        "first (`crucible reserve`), or ask for tier=on-demand or tier=interruptible.",
    )


def not_isolated(what: str, nodes: int) -> Refusal:
    """Every host that has ``what`` runs code without full isolation, and only its owner's."""
    return Refusal(
        RefusalCode.NOT_ISOLATED,
        f"no fully isolated host has {what} for {nodes} node(s): the hosts that have them "
        "run only their owner's code (they do not isolate fully, e.g. runtime process, or "
        "their account is not a provider the operator approved). Wait for a fully isolated "
        "host of a provider (`crucible market hosts` shows each host's isolation), or run "
        "it on a host of your own account.",
    )


def no_egress(what: str, nodes: int) -> Refusal:
    """The function asks for network egress, and no host with ``what`` open to the renter
    filters it (IsolationReport.egress_filter)."""
    return Refusal(
        RefusalCode.NOT_ISOLATED,
        f"no host that filters network egress has {what} for {nodes} node(s): the function "
        "asks for network=, and the hosts that have them cannot keep a sandbox's egress away "
        "from the host, so they give network only to their owner's code (`crucible market "
        "hosts` shows `egress filtered`). Drop network=, or run it on a host of your own.",
    )


def no_cluster_net(what: str, nodes: int) -> Refusal:
    """A cluster's members need hosts that build its private network, and fewer than
    ``nodes`` hosts with ``what`` open to the renter do (IsolationReport.cluster_network)."""
    return Refusal(
        RefusalCode.NOT_ISOLATED,
        f"fewer than {nodes} hosts that build a cluster's private network have {what}: the "
        "other hosts cannot keep a cluster's traffic away from other sandboxes, so they run "
        "only their owner's clusters (`crucible market hosts` shows `cluster network`). Use "
        "fewer nodes, or run it on hosts of your own.",
    )


def unverified(what: str, nodes: int) -> Refusal:
    """verified=True was asked, and no host with ``what`` open to the renter is verified."""
    return Refusal(
        RefusalCode.UNVERIFIED,
        f"no verified host has {what} for {nodes} node(s): you asked for verified hosts, and "
        "the hosts that have them did not pass the self-test against the GPU catalog "
        "(`crucible market hosts` shows why). Drop verified=True, or try again later.",
    )


def refuse_lease(st: MarketState, req: LeaseRequest, models: list[str], now: int) -> Refusal:
    """The most useful reason ``req`` cannot be placed now: the first constraint, in the
    order offer, size, filters, price, capacity, that rules out every type asked (one pass
    over the hosts of those types)."""
    if req.tier is Tier.RESERVED:
        return _reserved_refusal(st, req, now)
    names = _names(models)
    listed = largest = big_nodes = open_nodes = vetted_nodes = fit_nodes = best_rel = 0
    net_nodes = 0
    regions: set[str] = set()
    greenest: int | None = None  # the lowest declared intensity among hosts big enough
    cheapest_ask: int | None = None
    lowest_min: int | None = None
    for model in models:
        big = opened = netted = vetted = fit = 0
        for pool in st.pools_by_type.get(model, {}).values():
            units = pool.ix_units  # what the indexes hold: 0 when not listed
            if not units or pool.offer is None:
                continue
            listed += 1
            if units > largest:
                largest = units
            if units < req.count or pool.memory_gib < req.memory_gib:
                continue
            big += 1
            spec = pool.host.spec
            if not spec.admits(req.account):
                continue
            opened += 1
            if not spec.admits(req.account, network=req.network, cluster=req.cluster):
                continue
            netted += 1
            if not spec.admits(
                req.account, verified=req.verified, network=req.network, cluster=req.cluster
            ):
                continue
            vetted += 1
            regions.add(spec.region)
            best_rel = max(best_rel, spec.reliability_ppm)
            if spec.carbon_g_per_kwh is not None:
                greenest = (
                    spec.carbon_g_per_kwh
                    if greenest is None
                    else min(greenest, spec.carbon_g_per_kwh)
                )
            if (
                (req.region is not None and spec.region != req.region)
                or spec.reliability_ppm < req.min_reliability_ppm
                or not under_carbon_cap(req.max_carbon_g_per_kwh, spec.carbon_g_per_kwh)
            ):
                continue
            fit += 1
            ask, low = pool.offer.on_demand, pool.offer.interruptible_min
            cheapest_ask = ask if cheapest_ask is None else min(cheapest_ask, ask)
            lowest_min = low if lowest_min is None else min(lowest_min, low)
        big_nodes, fit_nodes = max(big_nodes, big), max(fit_nodes, fit)
        open_nodes, vetted_nodes = max(open_nodes, opened), max(vetted_nodes, vetted)
        net_nodes = max(net_nodes, netted)
    if not listed:
        return Refusal(
            RefusalCode.NO_OFFER,
            f"no host offers {names} right now (none is listed, or all are draining or "
            "offline). Try another device type or try again later.",
        )
    if big_nodes < req.nodes:
        if not big_nodes:
            return Refusal(
                RefusalCode.TOO_LARGE,
                f"no host has {req.count} {names} on one node; the largest has {largest}. "
                "Ask for fewer devices per node and more nodes.",
            )
        return Refusal(
            RefusalCode.TOO_LARGE,
            f"only {big_nodes} hosts have {req.count} {names} on one node, and {req.nodes} "
            "nodes need as many distinct hosts.",
        )
    if open_nodes < req.nodes:
        return not_isolated(f"{req.count} {names}", req.nodes)
    if net_nodes < req.nodes and req.cluster:
        return no_cluster_net(f"{req.count} {names}", req.nodes)
    if net_nodes < req.nodes:
        return no_egress(f"{req.count} {names}", req.nodes)
    if vetted_nodes < req.nodes:
        return unverified(f"{req.count} {names}", req.nodes)
    if fit_nodes < req.nodes:
        cap = req.max_carbon_g_per_kwh
        carbon = ""
        if cap is not None:
            carbon = (
                " and none declares a carbon intensity"
                if greenest is None
                else f" and the greenest declares {greenest} gCO2/kWh"
            )
        return Refusal(
            RefusalCode.FILTERED,
            f"not enough hosts with {req.count} {names} match "
            f"{_filters(req.region, req.min_reliability_ppm, cap)} for {req.nodes} node(s); "
            f"hosts with them are in {', '.join(sorted(regions))} with reliability up to "
            f"{best_rel / 1_000_000:g}{carbon}. Widen the region, lower min_reliability"
            + (", or raise max_carbon_g_per_kwh." if cap is not None else "."),
        )
    assert cheapest_ask is not None and lowest_min is not None
    if req.tier is Tier.ON_DEMAND:
        if req.max_price is not None and cheapest_ask > req.max_price:
            return Refusal(
                RefusalCode.PRICE,
                f"the cheapest on-demand {names} that fits asks {_per_hour(cheapest_ask)}, "
                f"above your max_price of {_per_hour(req.max_price)}. Raise max_price, or bid "
                "for interruptible capacity.",
            )
        # A higher max_price helps only where it left out a dearer host (on-demand pays
        # the ask: it never outbids anything).
        return Refusal(
            RefusalCode.NO_CAPACITY,
            f"every {names} that fits is leased on-demand, reserved, or to interruptible bids "
            "at or above the ask, for the nodes asked. Try again later, add a fallback type"
            + (", or raise max_price." if req.max_price is not None else "."),
        )
    if req.bid is not None and req.bid < lowest_min:
        return Refusal(
            RefusalCode.BID_TOO_LOW,
            f"your bid of {_per_hour(req.bid)} is below every fitting {names} host's "
            f"interruptible minimum (the lowest is {_per_hour(lowest_min)}). Bid at least "
            "that.",
        )
    if req.bid is None and req.max_price is not None and lowest_min > req.max_price:
        return Refusal(
            RefusalCode.PRICE,
            f"the lowest interruptible minimum of a fitting {names} host is "
            f"{_per_hour(lowest_min)}, above your max_price of {_per_hour(req.max_price)}.",
        )
    return Refusal(
        RefusalCode.NO_CAPACITY,
        f"every {names} that fits is taken by on-demand or reserved leases or by bids at "
        "or above yours. Bid more to preempt (`crucible market quote` says what bid would "
        "win now), try later, or add a fallback type.",
    )


def with_winning_bid(st: MarketState, req: LeaseRequest, models: list[str], r: Refusal) -> Refusal:
    """For a quote: an interruptible capacity refusal, completed with the lowest bid that
    would win now (computed only here: it walks every standing bid of the types asked)."""
    if r.code is not RefusalCode.NO_CAPACITY or req.tier is not Tier.INTERRUPTIBLE:
        return r
    if req.nodes != 1:
        return r
    winning = min_winning_bid(st, req, models)
    if winning is None:
        hint = (
            "No bid within your max_price would win now"
            if req.max_price is not None
            # Every fitting device is held on demand, reserved, or by bids nobody can outbid.
            else "No bid would win now"
        ) + "; try later or another type."
    else:
        hint = f"A bid of {_per_hour(winning)} would win now."
    names = _names(models)
    return Refusal(
        r.code,
        f"every {names} that fits is taken by on-demand or reserved leases or by bids at or "
        f"above yours. {hint}",
        min_winning_bid=winning,
    )


def min_winning_bid(st: MarketState, req: LeaseRequest, models: list[str]) -> int | None:
    """The lowest bid that one node of ``req`` would win with now (on free capacity, or by
    preempting strictly lower bids), within ``max_price``; ``None`` if there is none."""
    best: int | None = None
    cap = req.max_price
    for model in models:
        for pool in st.pools_by_type.get(model, {}).values():
            if (
                pool.offer is not None
                and pool.listed
                and pool.host.spec.admits(
                    req.account, verified=req.verified, network=req.network, cluster=req.cluster
                )
                and (req.region is None or pool.host.spec.region == req.region)
                and pool.host.spec.reliability_ppm >= req.min_reliability_ppm
                and under_carbon_cap(req.max_carbon_g_per_kwh, pool.host.spec.carbon_g_per_kwh)
                and pool.free_count() >= req.count
                and pool.free_memory >= req.memory_gib
            ):
                need = pool.offer.interruptible_min
                if (cap is None or need <= cap) and (best is None or need < best):
                    best = need
        book = st.books.get(model)
        if book is None:
            continue
        progress: dict[str, tuple[int, int]] = {}
        for bid, _, lease_id in book.bids:
            if (best is not None and bid + 1 >= best) or (cap is not None and bid + 1 > cap):
                break
            lease = st.leases[lease_id]
            pool = st.pool_of(lease)
            spec = pool.host.spec
            if (
                pool.offer is None
                or not pool.listed
                or not spec.admits(
                    req.account, verified=req.verified, network=req.network, cluster=req.cluster
                )
                or (req.region is not None and spec.region != req.region)
                or spec.reliability_ppm < req.min_reliability_ppm
            ):
                continue
            units, memory = progress.get(pool.host_id, (pool.free_count(), pool.free_memory))
            if units >= req.count and memory >= req.memory_gib:
                continue  # reached at a lower bid already
            units += sum(1 for u in lease.devices if u not in pool.pins)
            memory += lease.memory_gib
            progress[pool.host_id] = (units, memory)
            if units >= req.count and memory >= req.memory_gib:
                need = max(bid + 1, pool.offer.interruptible_min)
                if (cap is None or need <= cap) and (best is None or need < best):
                    best = need
    return best


def refuse_reservation(st: MarketState, req: ReserveRequest) -> Refusal:
    """The most useful reason a reservation cannot be placed."""
    listed = [p for p in _listed(st, [req.model]) if len(p.units) >= req.count]
    if len(listed) < req.nodes:
        have = f"only {len(listed)} listed hosts have" if listed else "no listed host has"
        return Refusal(
            RefusalCode.NO_OFFER if not listed else RefusalCode.TOO_LARGE,
            f"{have} {req.count} {req.model} on one node; {req.nodes} block(s) need as many "
            "hosts. Reserve fewer devices per block or fewer blocks.",
        )
    if sum(1 for p in listed if p.host.spec.admits(req.account)) < req.nodes:
        return not_isolated(f"{req.count} {req.model}", req.nodes)
    listed = [p for p in listed if p.host.spec.admits(req.account, verified=req.verified)]
    if len(listed) < req.nodes:
        return unverified(f"{req.count} {req.model}", req.nodes)
    fit = [
        p
        for p in listed
        if (req.region is None or p.host.spec.region == req.region)
        and p.host.spec.reliability_ppm >= req.min_reliability_ppm
    ]
    if len(fit) < req.nodes:
        return Refusal(
            RefusalCode.FILTERED,
            f"fewer than {req.nodes} hosts with {req.count} {req.model} match "
            f"{_filters(req.region, req.min_reliability_ppm)}. Widen the region"
            + (" or lower min_reliability." if req.min_reliability_ppm else "."),
        )
    prices = sorted(p.offer.reserved for p in fit if p.offer is not None)
    if req.max_price is not None and prices[req.nodes - 1] > req.max_price:
        return Refusal(
            RefusalCode.PRICE,
            f"the reserved price for {req.count} {req.model} on {req.nodes} host(s) starts at "
            f"{_per_hour(prices[req.nodes - 1])}, above your max_price of "
            f"{_per_hour(req.max_price)}.",
        )
    return Refusal(
        RefusalCode.NO_CAPACITY,
        f"not enough {req.model} are free of on-demand leases, higher bids and other "
        f"reservations from {_utc(req.start_ms)} to {_utc(req.end_ms)} for {req.nodes} block(s) of "
        f"{req.count}. Try another window or fewer devices.",
    )
