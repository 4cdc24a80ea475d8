"""The market: one object holding the book of every device type, with the operations the
shell calls. Pure: no I/O, no clock (every operation that depends on time takes ``now_ms``,
and time never goes backwards), decisions returned as data.

**Decide, persist, apply.** :meth:`Market.decide_lease` and :meth:`Market.decide_reservation`
compute a decision without changing anything; :meth:`Market.apply` carries it out. A shell
that must make a decision durable before it takes effect decides, commits the decision to its
store, then applies it, all under one lock; :meth:`Market.lease` and :meth:`Market.reserve`
do both steps at once. A decision applies only to the exact state it was computed from
(``version``); otherwise :meth:`Market.apply` raises
:class:`~crucible.errors.ConflictError`.

Every other operation changes the state at once and returns what it did. If the shell cannot
persist what an operation returned, it must rebuild the market from its store (hosts, offers,
running leases, reservations) rather than carry on with a market that is ahead of it.

**Time.** Reservations have events (notices, starts, ends). Call :meth:`Market.advance`
with the current time before deciding anything; a decision with events still due raises
``ValueError`` rather than decide on a stale view.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, KeysView

from crucible.core.market.audit import audit
from crucible.core.market.decisions import (
    Advanced,
    BookView,
    HostWentOffline,
    LeaseDecision,
    LeaseGranted,
    PriceLevel,
    Quote,
    Refusal,
    ReservationDecision,
    ReservationGranted,
)
from crucible.core.market.leases import Lease, Reservation
from crucible.core.market.offers import HostSpec, Offer
from crucible.core.market.orders import LeaseRequest, ReserveRequest
from crucible.core.market.placement import apply_lease, decide_lease, model_order
from crucible.core.market.refusals import with_winning_bid
from crucible.core.market.reservations import advance, apply_reservation, decide_reservation
from crucible.core.market.rules import MarketRules
from crucible.core.market.state import (
    HostState,
    MarketState,
    PoolState,
    add_lease,
    end_lease,
    reindex,
    set_underwater,
)
from crucible.core.market.terms import CPU, EndReason, Tier
from crucible.errors import ConflictError, InvalidRequestError, NotFoundError

__all__ = ["Market"]


class Market:
    """The exchange's order book and placement, in memory."""

    def __init__(self, rules: MarketRules | None = None) -> None:
        self._st = MarketState(rules or MarketRules())

    # -- state -----------------------------------------------------------------------------

    @property
    def rules(self) -> MarketRules:
        return self._st.rules

    @property
    def now_ms(self) -> int:
        """The latest time the market has seen."""
        return self._st.now_ms

    @property
    def version(self) -> int:
        """Increases with every change; decisions carry the version they were computed at."""
        return self._st.version

    def _host(self, host_id: str) -> HostState:
        try:
            return self._st.hosts[host_id]
        except KeyError:
            raise NotFoundError(f"host {host_id} is not in the market") from None

    def _changed(self) -> None:
        self._st.version += 1

    # -- hosts and offers ------------------------------------------------------------------

    def add_host(self, spec: HostSpec) -> None:
        """A host joins the market: online, not draining, no offers yet (nothing for sale)."""
        st = self._st
        if spec.host_id in st.hosts:
            raise ConflictError(f"host {spec.host_id} is already in the market")
        host = HostState(spec)
        st.hosts[spec.host_id] = host
        for device_type, units in spec.device_types().items():
            memory = spec.memory_gib if device_type == CPU else 0
            pool = PoolState(host, device_type, units, memory, memory)
            host.pools[device_type] = pool
            st.pools[(spec.host_id, device_type)] = pool
            st.pools_by_type.setdefault(device_type, {})[spec.host_id] = pool
            st.book(device_type)
        self._changed()

    def remove_host(self, host_id: str) -> None:
        """Take a host out of the market (to add it back with other devices, or for good).
        Refused while a lease runs on it or a reservation holds its devices: they keep
        the devices they were granted."""
        st = self._st
        host = self._host(host_id)
        if any(pool.leases for pool in host.pools.values()):
            raise ConflictError(f"host {host_id} has running leases; it leaves when they end")
        if any(
            b.host_id == host_id for rs in st.reservations.values() for b in rs.reservation.blocks
        ):
            raise ConflictError(f"host {host_id} has reservations; it leaves when they end")
        for device_type, pool in host.pools.items():
            pool.offer = None  # unlisted: reindex takes it out of every index and level
            reindex(st, pool)
            del st.pools[(host_id, device_type)]
            by_type = st.pools_by_type.get(device_type, {})
            by_type.pop(host_id, None)
        del st.hosts[host_id]
        self._changed()

    def hosts_busy(self) -> set[str]:
        """Hosts that :meth:`remove_host` would refuse: a lease runs or a reservation holds
        devices there."""
        st = self._st
        busy = {lease.host_id for lease in st.leases.values()}
        for rs in st.reservations.values():
            busy.update(b.host_id for b in rs.reservation.blocks)
        return busy

    def update_host(self, spec: HostSpec) -> None:
        """Change a host's region, reliability score, energy source or carbon intensity.
        Its devices cannot change here (take the host out and add it again)."""
        host = self._host(spec.host_id)
        old = host.spec
        if (old.device_types(), old.memory_gib) != (spec.device_types(), spec.memory_gib):
            raise ConflictError(
                f"host {spec.host_id}: devices cannot change while it is in the market"
            )
        st = self._st
        if old.region != spec.region:
            for pool in host.pools.values():
                for lease_id in pool.leases:
                    regions = st.account_regions[st.leases[lease_id].account]
                    regions[old.region] -= 1
                    if not regions[old.region]:
                        del regions[old.region]
                    regions[spec.region] = regions.get(spec.region, 0) + 1
        host.spec = spec
        for pool in host.pools.values():
            reindex(st, pool)
        self._changed()

    def set_offer(self, host_id: str, device_type: str, offer: Offer | None) -> None:
        """Set (or with ``None`` withdraw) a host's terms for a device type. Running leases
        keep the price they were granted at."""
        host = self._host(host_id)
        pool = host.pools.get(device_type)
        if pool is None:
            raise NotFoundError(f"host {host_id} has no {device_type} to offer")
        if offer is not None and device_type != CPU and offer.has_memory_prices():
            raise InvalidRequestError(
                "memory is priced separately only for CPU-only capacity; a GPU's price "
                "includes its share of the host's memory"
            )
        pool.offer = offer
        for lease_id in pool.leases:
            lease = self._st.leases[lease_id]
            if lease.tier is Tier.INTERRUPTIBLE:
                set_underwater(self._st, lease, pool)
        reindex(self._st, pool)
        self._changed()

    def set_draining(self, host_id: str, draining: bool) -> None:
        """A draining host takes no new leases or reservations; running leases go on, and
        owners still use their reservations on it."""
        host = self._host(host_id)
        host.draining = draining
        for pool in host.pools.values():
            reindex(self._st, pool)
        self._changed()

    def set_online(self, host_id: str, online: bool, now_ms: int) -> HostWentOffline:
        """Mark a host lost (its running leases end, reason ``host_lost``) or back."""
        st = self._st
        st.check_time(now_ms)
        host = self._host(host_id)
        ended: list[Lease] = []
        affected: list[str] = []
        if not online and host.online:
            for pool in host.pools.values():
                for lease_id in sorted(pool.leases):
                    ended.append(end_lease(st, lease_id, now_ms, EndReason.HOST_LOST))
            affected = sorted(
                rid
                for rid, rs in st.reservations.items()
                if any(b.host_id == host_id for b in rs.reservation.blocks)
            )
        host.online = online
        for pool in host.pools.values():
            reindex(st, pool)
        st.now_ms = now_ms
        self._changed()
        return HostWentOffline(tuple(ended), tuple(affected))

    def host(self, host_id: str) -> HostSpec:
        return self._host(host_id).spec

    def host_ids(self) -> list[str]:
        return sorted(self._st.hosts)

    def offer(self, host_id: str, device_type: str) -> Offer | None:
        pool = self._host(host_id).pools.get(device_type)
        return None if pool is None else pool.offer

    # -- leases ----------------------------------------------------------------------------

    def decide_lease(
        self, request: LeaseRequest, now_ms: int, *, avoid: Container[str] = ()
    ) -> LeaseDecision:
        """What :meth:`lease` would do now, without doing it; no node on a host in ``avoid``."""
        return decide_lease(self._st, request, now_ms, avoid)

    def lease(self, request: LeaseRequest, now_ms: int) -> LeaseDecision:
        """Decide and, if granted, apply."""
        decision = decide_lease(self._st, request, now_ms)
        if isinstance(decision, LeaseGranted):
            apply_lease(self._st, decision)
        return decision

    def apply(self, decision: LeaseGranted | ReservationGranted) -> None:
        """Carry out a decision computed from the current state (see the module docstring)."""
        if isinstance(decision, LeaseGranted):
            apply_lease(self._st, decision)
        else:
            apply_reservation(self._st, decision)

    def quote(self, request: LeaseRequest, now_ms: int) -> Quote:
        """What ``request`` would get now: the same decision a lease would make, not applied.
        An interruptible request refused for capacity also learns the lowest bid that would
        win now (``refusal.min_winning_bid``); lease decisions skip that walk."""
        decision = decide_lease(self._st, request, now_ms)
        if isinstance(decision, Refusal):
            models = model_order(self._st, request)
            refusal = with_winning_bid(self._st, request, models, decision)
            return Quote(request, False, refusal=refusal)
        leases = decision.leases
        all_reserved = all(lease.tier is Tier.RESERVED for lease in leases)
        return Quote(
            request,
            True,
            model=leases[0].device_type,
            tier=Tier.RESERVED if all_reserved else request.tier,
            price_micros_per_device_hour=max(x.price_micros_per_device_hour for x in leases),
            rate_micros_per_hour=sum(lease.rate_micros_per_hour for lease in leases),
            hosts=tuple(lease.host_id for lease in leases),
            preempts=len(decision.preemptions),
            reservations=tuple(
                sorted({x.reservation_id for x in leases if x.reservation_id is not None})
            ),
        )

    def release(self, lease_id: str, now_ms: int, reason: EndReason = EndReason.RELEASED) -> Lease:
        """End a running lease (the renter let it go, or ``reason`` says why the shell did).
        Returns the ended lease."""
        st = self._st
        st.check_time(now_ms)
        if lease_id not in st.leases:
            raise NotFoundError(f"no running lease {lease_id}")
        ended = end_lease(st, lease_id, now_ms, reason)
        st.now_ms = now_ms
        self._changed()
        return ended

    def end_account(
        self, account: str, now_ms: int, reason: EndReason = EndReason.OUT_OF_CREDIT
    ) -> tuple[Lease, ...]:
        """End every running lease of an account that costs it more (out of credit, or over
        its daily cap: the shell drains its containers). Its reservations stay, and so do the
        leases running inside them: they are paid for up front, and cost nothing more."""
        st = self._st
        st.check_time(now_ms)
        ended = tuple(
            end_lease(st, lease_id, now_ms, reason)
            for lease_id in sorted(st.account_leases.get(account, ()))
            if st.leases[lease_id].reservation_id is None
        )
        st.now_ms = now_ms
        self._changed()
        return ended

    def get_lease(self, lease_id: str) -> Lease:
        try:
            return self._st.leases[lease_id]
        except KeyError:
            raise NotFoundError(f"no running lease {lease_id}") from None

    def lease_ids(self) -> KeysView[str]:
        """The running leases' ids, as a live read-only view (set operations run in C)."""
        return self._st.leases.keys()

    def host_leases(self, host_id: str) -> list[Lease]:
        """The running leases on one host, every device type (none for an unknown host)."""
        st = self._st
        h = st.hosts.get(host_id)
        if h is None:
            return []
        return [st.leases[i] for pool in h.pools.values() for i in sorted(pool.leases)]

    def running_leases(self, account: str | None = None) -> list[Lease]:
        st = self._st
        ids: Iterable[str] = st.leases if account is None else st.account_leases.get(account, ())
        return [st.leases[i] for i in sorted(ids)]

    # -- reservations and time -------------------------------------------------------------

    def decide_reservation(self, request: ReserveRequest, now_ms: int) -> ReservationDecision:
        return decide_reservation(self._st, request, now_ms)

    def reserve(self, request: ReserveRequest, now_ms: int) -> ReservationDecision:
        """Decide and, if granted, apply."""
        decision = decide_reservation(self._st, request, now_ms)
        if isinstance(decision, ReservationGranted):
            apply_reservation(self._st, decision)
        return decision

    def reservations(self, account: str | None = None) -> list[Reservation]:
        """Reservations whose window has not ended."""
        st = self._st
        return [
            rs.reservation
            for rid, rs in sorted(st.reservations.items())
            if account is None or rs.reservation.account == account
        ]

    def restore(
        self, reservations: Iterable[Reservation], leases: Iterable[Lease], now_ms: int
    ) -> None:
        """Put back what the shell's store says exists (after a restart): reservations whose
        window has not ended, then running leases. Hosts and offers must be in already, and
        the market must hold no lease yet. Leases inside a reservation keep its devices."""
        st = self._st
        if st.leases or st.reservations:
            raise ConflictError("restore() is for an empty market, before any lease")
        st.check_time(now_ms)
        st.now_ms = now_ms
        for r in reservations:
            apply_reservation(
                st, ReservationGranted(r, preemptions=(), at_ms=now_ms, version=st.version)
            )
        for lease in leases:
            if (lease.host_id, lease.device_type) not in st.pools:
                raise NotFoundError(f"lease {lease.lease_id}: host {lease.host_id} has no pool")
            add_lease(st, lease)
        self._changed()

    def advance(self, now_ms: int) -> Advanced:
        """Let time pass: send reservation notices, start and end windows."""
        return advance(self._st, now_ms)

    def next_event_ms(self) -> int | None:
        """When :meth:`advance` next has something to do (the shell's next wake-up)."""
        events = self._st.events
        return events[0][0] if events else None

    # -- views -----------------------------------------------------------------------------

    def book(
        self, device_type: str, now_ms: int, depth: int = 10, *, for_account: str | None = None
    ) -> BookView:
        """The book of one device type (see :class:`BookView`). ``for_account``: as that
        account may buy from it, the asks and devices of hosts that run only their owner's
        work (not fully isolated, or of an account that is not a provider) left out unless
        they are its own; counted from the pools, not the running levels."""
        if depth < 1:
            raise ValueError("depth counts price levels from 1")
        b = self._st.books.get(device_type)
        if b is None:
            return BookView(device_type, now_ms, (), (), (), (), 0, 0, {t: 0 for t in Tier})
        if for_account is not None and any(
            not p.host.spec.isolated and p.host.spec.owner != for_account
            for p in self._st.pools_by_type.get(device_type, {}).values()
        ):
            asks: dict[int, int] = {}
            mins: dict[int, int] = {}
            free = listed = 0
            for p in self._st.pools_by_type.get(device_type, {}).values():
                spec = p.host.spec
                if p.ix_keys is None or (not spec.isolated and spec.owner != for_account):
                    continue
                asks[p.ix_ask] = asks.get(p.ix_ask, 0) + p.ix_free
                mins[p.ix_min] = mins.get(p.ix_min, 0) + p.ix_free
                free, listed = free + p.ix_free, listed + p.ix_units
            return BookView(
                device_type=device_type,
                at_ms=now_ms,
                asks=tuple(PriceLevel(k, n) for k, n in sorted(asks.items()) if n)[:depth],
                interruptible_minimums=tuple(
                    PriceLevel(k, n) for k, n in sorted(mins.items()) if n
                )[:depth],
                standing_bids=tuple(
                    PriceLevel(p, n) for p, n in reversed(b.standing.items()[-depth:])
                ),
                recent=tuple(reversed(b.recent)),
                free_devices=free,
                listed_devices=listed,
                leased=dict(b.leased),
            )
        return BookView(
            device_type=device_type,
            at_ms=now_ms,
            asks=tuple(PriceLevel(p, n) for p, n in b.asks.items()[:depth]),
            interruptible_minimums=tuple(PriceLevel(p, n) for p, n in b.mins.items()[:depth]),
            standing_bids=tuple(PriceLevel(p, n) for p, n in reversed(b.standing.items()[-depth:])),
            recent=tuple(reversed(b.recent)),
            free_devices=b.free,
            listed_devices=b.listed,
            leased=dict(b.leased),
        )

    def device_types(self) -> list[str]:
        return sorted(self._st.books)

    def audit(self) -> list[str]:
        """Recompute every index from scratch and compare (for tests and debugging): the
        problems found, or an empty list."""
        return audit(self._st)
