"""A from-scratch check of the market's derived state: every index, price level and counter
recomputed by brute force and compared with what the incremental updates hold. Slow (it
scans everything); for tests, the simulator's debug mode, and post-mortems."""

from __future__ import annotations

from collections import Counter

from crucible.core.market.index import price_band
from crucible.core.market.state import (
    BANDED_KINDS,
    FREE_KINDS,
    UNIT_KINDS,
    MarketState,
    pool_keys,
)
from crucible.core.market.terms import Tier

__all__ = ["audit"]


def _levels(counts: Counter[int]) -> list[tuple[int, int]]:
    return sorted((p, n) for p, n in counts.items() if n)


def audit(st: MarketState) -> list[str]:
    """Problems found (an empty list when the state is consistent)."""
    problems: list[str] = []
    held: dict[tuple[str, str, int], str] = {}
    for lease_id, lease in st.leases.items():
        if lease.end_ms is not None:
            problems.append(f"running lease {lease_id} has an end")
        pool = st.pools.get((lease.host_id, lease.device_type))
        if pool is None:
            problems.append(f"lease {lease_id} is on an unknown pool")
            continue
        for u in lease.devices:
            key = (lease.host_id, lease.device_type, u)
            if key in held:
                problems.append(f"device {key} is held by {held[key]} and {lease_id}")
            held[key] = lease_id
            if u not in pool.units:
                problems.append(f"lease {lease_id} holds {u}, not a unit of its pool")
    for (host_id, device_type), pool in st.pools.items():
        for u, lease_id in pool.held.items():
            if held.get((host_id, device_type, u)) != lease_id:
                problems.append(f"{host_id}/{device_type}/{u} held by unknown {lease_id}")
        mem = sum(st.leases[i].memory_gib for i in pool.leases if i in st.leases)
        if pool.free_memory != pool.memory_gib - mem or pool.free_memory < 0:
            problems.append(f"{host_id}/{device_type}: free memory {pool.free_memory} is wrong")
        if set(pool.leases) != {i for i in pool.held.values()}:
            problems.append(f"{host_id}/{device_type}: lease set differs from held devices")
        for u, rids in pool.pins.items():
            for rid in rids:
                rs = st.reservations.get(rid)
                if rs is None or not any(
                    b.host_id == host_id and u in b.devices for b in rs.reservation.blocks
                ):
                    problems.append(f"{host_id}/{u} pinned by unknown reservation {rid}")
    for rid, rs in st.reservations.items():
        for b in rs.reservation.blocks:
            pool = st.pools[(b.host_id, rs.reservation.model)]
            for u in b.devices:
                if rid not in pool.pins.get(u, []):
                    problems.append(f"reservation {rid} does not pin {b.host_id}/{u}")
    for device_type, book in st.books.items():
        pools = [p for (_, t), p in st.pools.items() if t == device_type and p.listed]
        for kinds, size in ((FREE_KINDS, "free"), (UNIT_KINDS, "units")):
            for kind in kinds:
                ix = book.ranks[kind]
                top = max([len(p.units) for p in pools] + [len(ix.sizes())])
                for k in range(1, top + 1):
                    want_keys = sorted(
                        pool_keys(p)[kind]
                        for p in pools
                        if (p.free_count() if size == "free" else len(p.units)) >= k
                    )
                    if ix.keys(k) != want_keys:
                        problems.append(f"{device_type}: rank index {kind}[{k}] is wrong")
        for kind in BANDED_KINDS:
            bix = book.banded[kind]
            bands = {price_band(p.offer.interruptible_min) for p in pools if p.offer is not None}
            top = max([len(p.units) for p in pools] + [bix.depth()])
            for band in sorted(bands | set(bix.bands())):
                for k in range(1, top + 1):
                    want_keys = sorted(
                        pool_keys(p)[kind]
                        for p in pools
                        if p.offer is not None
                        and price_band(p.offer.interruptible_min) == band
                        and p.free_count() >= k
                    )
                    if bix.keys(band, k) != want_keys:
                        problems.append(f"{device_type}: banded index {kind}[{band}][{k}] is wrong")
        int_leases = [
            lease
            for lease in st.leases.values()
            if lease.device_type == device_type and lease.tier is Tier.INTERRUPTIBLE
        ]
        want_bids = sorted(
            (lease.price_micros_per_device_hour, -lease.start_ms, lease.lease_id)
            for lease in int_leases
        )
        if list(book.bids) != want_bids:
            problems.append(f"{device_type}: bid index is wrong")
        want_under = sorted(
            (lease.price_micros_per_device_hour, -lease.start_ms, lease.lease_id)
            for lease in int_leases
            if (offer := st.pools[(lease.host_id, device_type)].offer) is not None
            and lease.price_micros_per_device_hour < offer.interruptible_min
        )
        if list(book.underwater) != want_under or st.underwater.intersection(
            x.lease_id for x in int_leases
        ) != {e[2] for e in want_under}:
            problems.append(f"{device_type}: underwater index is wrong")
        standing: Counter[int] = Counter()
        for lease in int_leases:
            standing[lease.price_micros_per_device_hour] += lease.count
        if book.standing.items() != _levels(standing):
            problems.append(f"{device_type}: standing bid levels are wrong")
        asks: Counter[int] = Counter()
        mins: Counter[int] = Counter()
        ask_pools: Counter[int] = Counter()
        min_pools: Counter[int] = Counter()
        for p in pools:
            assert p.offer is not None
            asks[p.offer.on_demand] += p.free_count()
            mins[p.offer.interruptible_min] += p.free_count()
            ask_pools[p.offer.on_demand] += 1
            min_pools[p.offer.interruptible_min] += 1
        for name, levels, want in (
            ("asks", book.asks, asks),
            ("minimums", book.mins, mins),
            ("ask pools", book.ask_pools, ask_pools),
            ("minimum pools", book.min_pools, min_pools),
        ):
            if levels.items() != _levels(want):
                problems.append(f"{device_type}: {name} levels are wrong")
            want_max = max((p for p, n in want.items() if n), default=None)
            if levels.max() != want_max:
                problems.append(f"{device_type}: {name} maximum is wrong")
        if book.free != sum(p.free_count() for p in pools):
            problems.append(f"{device_type}: free count is wrong")
        if book.listed != sum(len(p.units) for p in pools):
            problems.append(f"{device_type}: listed count is wrong")
        leased: Counter[Tier] = Counter()
        for lease in st.leases.values():
            if lease.device_type == device_type:
                leased[lease.tier] += lease.count
        if any(book.leased[t] != leased[t] for t in Tier):
            problems.append(f"{device_type}: leased counts are wrong")
    hosts: dict[str, Counter[str]] = {}
    regions: dict[str, Counter[str]] = {}
    for lease in st.leases.values():
        hosts.setdefault(lease.account, Counter())[lease.host_id] += 1
        region = st.hosts[lease.host_id].spec.region
        regions.setdefault(lease.account, Counter())[region] += 1
    got_hosts = {a: Counter(c) for a, c in st.account_hosts.items() if c}
    got_regions = {a: Counter(c) for a, c in st.account_regions.items() if c}
    if got_hosts != hosts or got_regions != regions:
        problems.append("locality counters are wrong")
    return problems
