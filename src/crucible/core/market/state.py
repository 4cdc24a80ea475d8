"""The market's in-memory state and the primitives that keep its indexes in step with it.

Private to the market package: :class:`~crucible.core.market.book.Market` is the way in.
Every change to a pool (its leases, pins, offer, its host's profile or status) ends with
:func:`reindex`, which moves the pool between index lists and book price levels by comparing
what the indexes hold for it (``PoolState.ix_*``) with what they should hold now.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from crucible.core.market.decisions import ClearingPrice
from crucible.core.market.index import (
    BandedRankIndex,
    BidIndex,
    Levels,
    RankIndex,
    RankKey,
    price_band,
)
from crucible.core.market.leases import Lease, Reservation
from crucible.core.market.offers import HostSpec, Offer
from crucible.core.market.rules import MarketRules, carbon_key, effective_price
from crucible.core.market.terms import EndReason, Tier

# Rankings indexed by free units. "od"/"int"/"rel" serve cheapest (and fastest) requests:
# on-demand by effective ask, interruptible at the hosts' minimum by effective minimum, and
# interruptible with an explicit bid by reliability (the effective price of a fixed bid is
# bid / reliability). The "_g" variants put carbon intensity first for greenest requests.
# The "rel" rankings are banded by the hosts' minimum bid (see index.BandedRankIndex).
FREE_KINDS = ("od", "od_g", "int", "int_g")
BANDED_KINDS = ("rel", "rel_g")
# Rankings indexed by total units (reservations look at windows, not at free units now).
UNIT_KINDS = ("rsv", "rsv_g")

# Event kinds, in the order they are processed at equal times: a window that ends frees its
# devices before a window that starts on them sends notices or starts.
EV_END, EV_HOT, EV_START = 0, 1, 2


@dataclass(eq=False, slots=True)
class HostState:
    spec: HostSpec
    online: bool = True
    draining: bool = False
    pools: dict[str, PoolState] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class PoolState:
    """One device type on one host."""

    host: HostState
    device_type: str
    units: tuple[int, ...]
    memory_gib: int
    free_memory: int
    offer: Offer | None = None
    held: dict[int, str] = field(default_factory=dict)  # unit -> running lease id
    pins: dict[int, list[str]] = field(default_factory=dict)  # unit -> reservation ids
    clearing: dict[int, int] = field(default_factory=dict)  # unit -> SIGKILL deadline
    leases: set[str] = field(default_factory=set)
    # What the indexes and the book hold for this pool (None/0: not listed).
    ix_keys: dict[str, RankKey] | None = None
    ix_free: int = 0
    ix_units: int = 0
    ix_ask: int = 0
    ix_min: int = 0

    @property
    def host_id(self) -> str:
        return self.host.spec.host_id

    @property
    def listed(self) -> bool:
        """Takes new leases: online, not draining, and offered."""
        return self.host.online and not self.host.draining and self.offer is not None

    def free_units(self) -> list[int]:
        """Units no lease holds and no reservation pins, in index order."""
        return [u for u in self.units if u not in self.held and u not in self.pins]

    def free_count(self) -> int:
        return sum(1 for u in self.units if u not in self.held and u not in self.pins)

    def ready_at(self, units: tuple[int, ...], now_ms: int) -> int:
        """When ``units`` are clear of preempted leases still inside their grace period."""
        return max([now_ms, *(self.clearing.get(u, 0) for u in units)])


@dataclass(eq=False, slots=True)
class BookState:
    """Indexes and price levels of one device type."""

    ranks: dict[str, RankIndex]
    banded: dict[str, BandedRankIndex] = field(
        default_factory=lambda: {k: BandedRankIndex() for k in BANDED_KINDS}
    )
    bids: BidIndex = field(default_factory=BidIndex)
    # Interruptible leases bidding below their host's current minimum (it was raised after
    # they started): the only leases a request bidding the hosts' minimum can preempt.
    underwater: BidIndex = field(default_factory=BidIndex)
    asks: Levels = field(default_factory=Levels)  # ask -> free devices
    mins: Levels = field(default_factory=Levels)  # interruptible minimum -> free devices
    standing: Levels = field(default_factory=Levels)  # bid -> devices in running leases
    ask_pools: Levels = field(default_factory=Levels)  # ask -> listed pools
    min_pools: Levels = field(default_factory=Levels)  # minimum -> listed pools
    sizes: Levels = field(default_factory=Levels)  # units per listed pool -> pools
    free: int = 0
    listed: int = 0
    leased: dict[Tier, int] = field(default_factory=lambda: {t: 0 for t in Tier})
    recent: deque[ClearingPrice] = field(default_factory=deque)


@dataclass(eq=False, slots=True)
class ReservationState:
    reservation: Reservation
    hot: bool = False  # notices sent: interruptible leases on its devices were preempted
    active: bool = False  # inside its window: the owner's leases may use it


class MarketState:
    def __init__(self, rules: MarketRules) -> None:
        self.rules = rules
        self.now_ms = 0
        self.version = 0
        self.hosts: dict[str, HostState] = {}
        self.pools: dict[tuple[str, str], PoolState] = {}
        self.pools_by_type: dict[str, dict[str, PoolState]] = {}  # type -> host id -> pool
        self.books: dict[str, BookState] = {}
        self.leases: dict[str, Lease] = {}  # running leases
        self.account_leases: dict[str, set[str]] = {}
        self.account_hosts: dict[str, dict[str, int]] = {}  # account -> host -> leases
        self.account_regions: dict[str, dict[str, int]] = {}  # account -> region -> leases
        self.reservations: dict[str, ReservationState] = {}  # windows not ended
        self.account_reservations: dict[str, list[str]] = {}
        self.events: list[tuple[int, int, int, str]] = []  # (time, kind, seq, reservation)
        self.underwater: set[str] = set()  # ids of the leases in BookState.underwater
        self._seq = 0

    # -- time ------------------------------------------------------------------------------

    def check_time(self, now_ms: int) -> None:
        if now_ms < self.now_ms:
            raise ValueError(f"time went backwards: {now_ms} < {self.now_ms}")

    def check_no_events_due(self, now_ms: int) -> None:
        """Decisions are made on a state whose due events are processed."""
        self.check_time(now_ms)
        if self.events and self.events[0][0] <= now_ms:
            raise ValueError(
                f"market events are due at {self.events[0][0]}: call advance({now_ms}) first"
            )

    def push_event(self, at_ms: int, kind: int, reservation_id: str) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at_ms, kind, self._seq, reservation_id))

    # -- lookups ---------------------------------------------------------------------------

    def book(self, device_type: str) -> BookState:
        b = self.books.get(device_type)
        if b is None:
            b = BookState(ranks={k: RankIndex() for k in (*FREE_KINDS, *UNIT_KINDS)})
            b.recent = deque(maxlen=self.rules.clearing_history)
            self.books[device_type] = b
        return b

    def pool_of(self, lease: Lease) -> PoolState:
        return self.pools[(lease.host_id, lease.device_type)]

    def locality(self, account: str, host: HostState) -> int:
        if host.spec.host_id in self.account_hosts.get(account, {}):
            return 0
        if host.spec.region in self.account_regions.get(account, {}):
            return 1
        return 2


def pool_keys(pool: PoolState) -> dict[str, RankKey]:
    assert pool.offer is not None
    spec = pool.host.spec
    rel = spec.reliability_ppm
    c = carbon_key(spec.carbon_g_per_kwh)
    hid = spec.host_id
    ask = effective_price(pool.offer.on_demand, rel)
    low = effective_price(pool.offer.interruptible_min, rel)
    rsv = effective_price(pool.offer.reserved, rel)
    return {
        "od": (ask, c, hid),
        "od_g": (c, ask, hid),
        "int": (low, c, hid),
        "int_g": (c, low, hid),
        "rel": (-rel, c, hid),
        "rel_g": (c, -rel, hid),
        "rsv": (rsv, c, hid),
        "rsv_g": (c, rsv, hid),
    }


def reindex(st: MarketState, pool: PoolState) -> None:
    """Bring the indexes and the book's levels in step with ``pool``."""
    listed = pool.listed
    keys = pool_keys(pool) if listed else None
    free = pool.free_count() if listed else 0
    units = len(pool.units) if listed else 0
    old_keys, old_free, old_units = pool.ix_keys, pool.ix_free, pool.ix_units
    if keys == old_keys and free == old_free and units == old_units:
        return
    book = st.book(pool.device_type)
    old_band = price_band(pool.ix_min)
    band = price_band(pool.offer.interruptible_min) if keys is not None and pool.offer else 0
    for kind in BANDED_KINDS:
        bix = book.banded[kind]
        if (
            old_keys is not None
            and keys is not None
            and ((old_keys[kind], old_band) == (keys[kind], band))
        ):
            if free < old_free:
                bix.remove(band, keys[kind], free, old_free)
            elif free > old_free:
                bix.add(band, keys[kind], old_free, free)
            continue
        if old_keys is not None:
            bix.remove(old_band, old_keys[kind], 0, old_free)
        if keys is not None:
            bix.add(band, keys[kind], 0, free)
    for kinds, new_n, old_n in ((FREE_KINDS, free, old_free), (UNIT_KINDS, units, old_units)):
        for kind in kinds:
            ix = book.ranks[kind]
            if keys is not None and old_keys is not None and keys[kind] == old_keys[kind]:
                if new_n < old_n:
                    ix.remove(keys[kind], new_n, old_n)
                elif new_n > old_n:
                    ix.add(keys[kind], old_n, new_n)
                continue
            if old_keys is not None:
                ix.remove(old_keys[kind], 0, old_n)
            if keys is not None:
                ix.add(keys[kind], 0, new_n)
    if old_keys is not None:
        book.asks.add(pool.ix_ask, -old_free)
        book.mins.add(pool.ix_min, -old_free)
        book.ask_pools.add(pool.ix_ask, -1)
        book.min_pools.add(pool.ix_min, -1)
        book.sizes.add(old_units, -1)
        book.free -= old_free
        book.listed -= old_units
    if keys is not None:
        assert pool.offer is not None
        pool.ix_ask, pool.ix_min = pool.offer.on_demand, pool.offer.interruptible_min
        book.asks.add(pool.ix_ask, free)
        book.mins.add(pool.ix_min, free)
        book.ask_pools.add(pool.ix_ask, 1)
        book.min_pools.add(pool.ix_min, 1)
        book.sizes.add(units, 1)
        book.free += free
        book.listed += units
    pool.ix_keys, pool.ix_free, pool.ix_units = keys, free, units


def _count(d: dict[str, int], key: str, n: int) -> None:
    left = d.get(key, 0) + n
    if left:
        d[key] = left
    else:
        d.pop(key, None)


def add_lease(st: MarketState, lease: Lease) -> None:
    """Record a granted lease: its devices become held."""
    pool = st.pool_of(lease)
    for u in lease.devices:
        if u in pool.held:
            raise AssertionError(f"device {u} of {pool.host_id} is already leased")
        pool.held[u] = lease.lease_id
        if pool.clearing.get(u, 0) <= lease.granted_ms:
            pool.clearing.pop(u, None)  # a deadline already past: forget it
    pool.free_memory -= lease.memory_gib
    pool.leases.add(lease.lease_id)
    st.leases[lease.lease_id] = lease
    st.account_leases.setdefault(lease.account, set()).add(lease.lease_id)
    _count(st.account_hosts.setdefault(lease.account, {}), lease.host_id, 1)
    _count(st.account_regions.setdefault(lease.account, {}), pool.host.spec.region, 1)
    book = st.book(lease.device_type)
    book.leased[lease.tier] += lease.count
    if lease.tier is Tier.INTERRUPTIBLE:
        book.bids.add(lease.price_micros_per_device_hour, lease.start_ms, lease.lease_id)
        book.standing.add(lease.price_micros_per_device_hour, lease.count)
        set_underwater(st, lease, pool)
    if lease.tier is not Tier.RESERVED and st.rules.clearing_history:
        book.recent.append(
            ClearingPrice(
                lease.granted_ms,
                lease.tier,
                lease.price_micros_per_device_hour,
                lease.count,
                lease.host_id,
            )
        )
    reindex(st, pool)


def end_lease(
    st: MarketState,
    lease_id: str,
    at_ms: int,
    reason: EndReason,
    clearing_deadline_ms: int | None = None,
) -> Lease:
    """End a running lease: its devices are released (and, for a preemption, marked as
    clearing until the SIGKILL deadline). Returns the ended lease."""
    lease = st.leases.pop(lease_id)
    pool = st.pool_of(lease)
    for u in lease.devices:
        del pool.held[u]
        if clearing_deadline_ms is not None:
            pool.clearing[u] = max(pool.clearing.get(u, 0), clearing_deadline_ms)
    pool.free_memory += lease.memory_gib
    pool.leases.discard(lease_id)
    mine = st.account_leases[lease.account]
    mine.discard(lease_id)
    if not mine:
        del st.account_leases[lease.account]
    _count(st.account_hosts[lease.account], lease.host_id, -1)
    _count(st.account_regions[lease.account], pool.host.spec.region, -1)
    book = st.book(lease.device_type)
    book.leased[lease.tier] -= lease.count
    if lease.tier is Tier.INTERRUPTIBLE:
        book.bids.remove(lease.price_micros_per_device_hour, lease.start_ms, lease.lease_id)
        book.standing.add(lease.price_micros_per_device_hour, -lease.count)
        if lease_id in st.underwater:
            st.underwater.discard(lease_id)
            book.underwater.remove(lease.price_micros_per_device_hour, lease.start_ms, lease_id)
    reindex(st, pool)
    return lease.ended(at_ms, reason)


def set_underwater(st: MarketState, lease: Lease, pool: PoolState) -> None:
    """File an interruptible lease in (or out of) its book's underwater index, by comparing
    its bid with its host's current minimum (call after the offer changes)."""
    below = pool.offer is not None and lease.price_micros_per_device_hour < (
        pool.offer.interruptible_min
    )
    if below == (lease.lease_id in st.underwater):
        return
    ix = st.book(lease.device_type).underwater
    entry = (lease.price_micros_per_device_hour, lease.start_ms, lease.lease_id)
    if below:
        st.underwater.add(lease.lease_id)
        ix.add(*entry)
    else:
        st.underwater.discard(lease.lease_id)
        ix.remove(*entry)
