"""The market under random operation (Hypothesis stateful testing), metered into a ledger.

After every step: the indexes agree with a from-scratch recount; no device is held by two
running leases, and over time no device is in two leases' ``[start, end)`` at once; every
preemption took an interruptible lease whose bid was strictly below the new price (never an
on-demand or reserved lease); nobody pays more than its bid or max_price; no interval is
charged after its lease ends, and each ended lease is charged exactly its cost; the ledger
sums to zero and replaying its entries gives the same balances.

Every single-node lease decision is also checked against a brute-force reference placement
(``Reference``: no indexes, it looks at every host) for the type chosen, the rank of the host,
whether it preempts, and the highest bid preempted.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from crucible.core.ledger import Ledger, renter_account
from crucible.core.market import (
    CPU,
    HostSpec,
    Lease,
    LeaseGranted,
    LeaseRequest,
    Market,
    MarketRules,
    Offer,
    PreemptCause,
    Preemption,
    Prefer,
    Refusal,
    RefusalCode,
    Reservation,
    ReservationGranted,
    ReserveRequest,
    Tier,
    effective_price,
    lease_intervals,
    reservation_intervals,
)
from crucible.core.metering import interval_cost

GRACE = 30_000
METER_MS = 600_000
ACCOUNTS = ("ac-a", "ac-b", "ac-c")
MODELS = ("A", "B")
SPEED = {"A": 2, "B": 1}
PRICES = [250_000 * i for i in range(1, 9)]  # $0.25 .. $2.00 per device-hour
FEE_PPM = 100_000


# -- the reference placement ----------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    how: str  # reserved | free | preempt
    model: str
    key: tuple[int, int] | tuple[int, int, str] | None = None
    level: int | None = None
    victims: frozenset[str] = frozenset()


def _price(req: LeaseRequest, offer: Offer) -> int | None:
    if req.tier is Tier.ON_DEMAND:
        price = offer.on_demand
    elif req.bid is None:
        price = offer.interruptible_min
    elif req.bid >= offer.interruptible_min:
        price = req.bid
    else:
        return None
    return None if req.max_price is not None and price > req.max_price else price


def _key(req: LeaseRequest, spec: HostSpec, offer: Offer) -> tuple[int, int, str]:
    rel = spec.reliability_ppm
    carbon = 1_000_000 if spec.carbon_g_per_kwh is None else spec.carbon_g_per_kwh
    if req.tier is Tier.ON_DEMAND:
        primary = effective_price(offer.on_demand, rel)
    elif req.bid is None:
        primary = effective_price(offer.interruptible_min, rel)
    else:
        primary = -rel
    if req.prefer is Prefer.GREENEST:
        return (carbon, primary, spec.host_id)
    return (primary, carbon, spec.host_id)


class Reference:
    """Brute-force placement of one node, from the market's public views and the machine's
    record of which hosts are draining or offline."""

    def __init__(self, m: Market, down: set[str], draining: set[str], now: int) -> None:
        self.m = m
        self.now = now
        self.down, self.draining = down, draining
        self.leases = m.running_leases()
        self.reservations = m.reservations()
        self.pinned = {
            (b.host_id, r.model, u) for r in self.reservations for b in r.blocks for u in b.devices
        }

    def _pools(self, model: str) -> list[tuple[HostSpec, Offer, list[int], int]]:
        out = []
        for host_id in self.m.host_ids():
            spec = self.m.host(host_id)
            units = spec.device_types().get(model)
            offer = self.m.offer(host_id, model) if units else None
            if offer is None or host_id in self.down or host_id in self.draining:
                continue
            assert units is not None
            held = {
                u
                for x in self.leases
                if x.host_id == host_id and x.device_type == model
                for u in x.devices
            }
            free = [u for u in units if u not in held and (host_id, model, u) not in self.pinned]
            used_mem = sum(
                x.memory_gib for x in self.leases if x.host_id == host_id and x.device_type == model
            )
            memory = spec.memory_gib - used_mem if model == CPU else 0
            out.append((spec, offer, free, memory))
        return out

    def _fits(self, req: LeaseRequest, spec: HostSpec, offer: Offer) -> bool:
        return (
            (req.region is None or spec.region == req.region)
            and spec.reliability_ppm >= req.min_reliability_ppm
            and _price(req, offer) is not None
        )

    def place(self, req: LeaseRequest) -> Expected | None:
        models = list(req.models)
        if req.prefer is Prefer.FASTEST:
            models.sort(key=lambda m: -SPEED.get(m, -1))
        for model in models:
            for r in self.reservations:
                if r.account != req.account or r.model != model:
                    continue
                if not r.start_ms <= self.now < r.end_ms:
                    continue
                for b in r.blocks:
                    if b.host_id in self.down:
                        continue
                    held = {
                        u
                        for x in self.leases
                        if x.host_id == b.host_id and x.device_type == model
                        for u in x.devices
                    }
                    if sum(1 for u in b.devices if u not in held) >= req.count:
                        return Expected("reserved", model)
            if req.tier is Tier.RESERVED:
                continue
            keys = [
                _key(req, spec, offer)[:2]
                for spec, offer, free, memory in self._pools(model)
                if self._fits(req, spec, offer)
                and len(free) >= req.count
                and memory >= req.memory_gib
            ]
            if keys:
                return Expected("free", model, key=min(keys))
        if req.tier is Tier.RESERVED:
            return None
        for model in models:
            best: tuple[int, tuple[int, int, str], frozenset[str]] | None = None
            for spec, offer, free, memory in self._pools(model):
                if not self._fits(req, spec, offer):
                    continue
                price = _price(req, offer)
                assert price is not None
                victims = sorted(
                    (
                        x
                        for x in self.leases
                        if x.host_id == spec.host_id
                        and x.device_type == model
                        and x.tier is Tier.INTERRUPTIBLE
                        and x.price_micros_per_device_hour < price
                    ),
                    key=lambda x: (x.price_micros_per_device_hour, -x.start_ms, x.lease_id),
                )
                units, taken = len(free), []
                for v in victims:
                    if units >= req.count and memory >= req.memory_gib:
                        break
                    units += sum(
                        1 for u in v.devices if (spec.host_id, model, u) not in self.pinned
                    )
                    memory += v.memory_gib
                    taken.append(v)
                if units >= req.count and memory >= req.memory_gib and taken:
                    level = taken[-1].price_micros_per_device_hour
                    cand = (level, _key(req, spec, offer), frozenset(x.lease_id for x in taken))
                    if best is None or cand[:2] < best[:2]:
                        best = cand
            if best is not None:
                return Expected("preempt", model, key=best[1], level=best[0], victims=best[2])
        return None


# -- the machine -----------------------------------------------------------------------------


@st.composite
def lease_requests(draw: st.DrawFn, account: str, lease_id: str) -> LeaseRequest:
    if draw(st.integers(0, 9)) == 0:
        models: tuple[str, ...] = (CPU,)
        memory = draw(st.sampled_from([0, 4, 8, 16]))
    else:
        models = tuple(draw(st.permutations(MODELS))[: draw(st.integers(1, 2))])
        memory = 0
    tier = draw(st.sampled_from([Tier.ON_DEMAND] * 3 + [Tier.INTERRUPTIBLE] * 4 + [Tier.RESERVED]))
    bid = draw(st.none() | st.sampled_from(PRICES)) if tier is Tier.INTERRUPTIBLE else None
    max_price = draw(st.none() | st.sampled_from(PRICES))
    if bid is not None and max_price is not None and bid > max_price:
        bid, max_price = max_price, bid
    return LeaseRequest(
        account=account,
        models=models,
        count=draw(st.sampled_from([1, 1, 1, 2, 3])),
        nodes=draw(st.sampled_from([1, 1, 1, 2])),
        tier=tier,
        bid=bid,
        max_price=max_price,
        region=draw(st.sampled_from([None, None, "r1", "r2"])),
        min_reliability_ppm=draw(st.sampled_from([0, 0, 900_000])),
        prefer=draw(st.sampled_from(Prefer)),
        memory_gib=memory,
        lease_id=lease_id,
    )


class MarketMachine(RuleBasedStateMachine):
    @initialize(
        fleet=st.lists(
            st.tuples(
                st.sampled_from(["A", "B", "AB"]), st.integers(1, 4), st.sampled_from(PRICES)
            ),
            min_size=2,
            max_size=4,
        )
    )
    def start(self, fleet: list[tuple[str, int, int]]) -> None:
        self.m = Market(MarketRules(grace_ms=GRACE, model_speed=SPEED, locality_scan=4))
        self.ledger = Ledger(FEE_PPM)
        self.now = 1_000
        self.n = 0
        self.down: set[str] = set()
        self.draining: set[str] = set()
        self.history: dict[str, Lease] = {}  # every lease ever granted, as it is now
        # device -> end of the last lease that used it (None: one is running on it)
        self.last_end: dict[tuple[str, str, int], int | None] = {}
        # (lease, device) -> the device's last end before that lease (to undo empty leases)
        self.end_before: dict[tuple[str, tuple[str, str, int]], int | None] = {}
        self.metered: dict[str, int | None] = {}  # lease or reservation -> metered until
        self.charged: dict[str, int] = {}
        self.reservations: dict[str, Reservation] = {}
        self.grants = 0
        for account in ACCOUNTS:
            self._grant(account, 2_000_000_000)
        for i, (kind, n, ask) in enumerate(fleet):
            self._add(kind, n, "r1" if i % 2 else "r2", 1_000_000 - 50_000 * i, None, ask)

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _grant(self, account: str, amount: int) -> None:
        self.grants += 1
        self.ledger.grant(f"grant-{self.grants}", account, amount, self.now)

    # -- hosts ---------------------------------------------------------------------------

    def _add(
        self, kind: str, n: int, region: str, reliability: int, carbon: int | None, ask: int
    ) -> None:
        host_id = self._id("h")
        if kind == "cpu":
            spec = HostSpec(host_id, region, cpu_cores=n * 2, memory_gib=16)
        else:
            models = [kind[i % len(kind)] for i in range(n)]
            spec = HostSpec(
                host_id,
                region,
                gpus=tuple(enumerate(models)),
                reliability_ppm=reliability,
                carbon_g_per_kwh=carbon,
            )
        self.m.add_host(spec)
        for device_type in spec.device_types():
            self._offer(host_id, device_type, ask, max(ask // 2, 1), ask * 3 // 4)

    def _offer(self, host_id: str, device_type: str, ask: int, low: int, rsv: int) -> None:
        memory = 50_000 if device_type == CPU else 0
        self.m.set_offer(host_id, device_type, Offer(ask, low, rsv, memory, memory // 2, memory))

    @precondition(lambda self: len(self.m.host_ids()) < 6)
    @rule(
        kind=st.sampled_from(["A", "B", "AB", "cpu"]),
        n=st.integers(1, 4),
        region=st.sampled_from(["r1", "r2"]),
        reliability=st.sampled_from([800_000, 900_000, 990_000, 1_000_000]),
        carbon=st.sampled_from([None, 20, 400]),
        ask=st.sampled_from(PRICES),
    )
    def add_host(
        self, kind: str, n: int, region: str, reliability: int, carbon: int | None, ask: int
    ) -> None:
        self._add(kind, n, region, reliability, carbon, ask)

    @precondition(lambda self: self.m.host_ids())
    @rule(
        data=st.data(),
        ask=st.sampled_from(PRICES),
        minimum=st.sampled_from(PRICES),
        reserved=st.sampled_from(PRICES),
        withdraw=st.integers(0, 9),
    )
    def set_offer(
        self, data: st.DataObject, ask: int, minimum: int, reserved: int, withdraw: int
    ) -> None:
        host_id = data.draw(st.sampled_from(self.m.host_ids()))
        device_type = data.draw(st.sampled_from(sorted(self.m.host(host_id).device_types())))
        if withdraw == 0:
            self.m.set_offer(host_id, device_type, None)
        else:
            self._offer(host_id, device_type, ask, minimum, reserved)

    @precondition(lambda self: self.m.host_ids())
    @rule(data=st.data())
    def toggle_draining(self, data: st.DataObject) -> None:
        host_id = data.draw(st.sampled_from(self.m.host_ids()))
        self.draining ^= {host_id}
        self.m.set_draining(host_id, host_id in self.draining)

    @precondition(lambda self: self.m.host_ids())
    @rule(data=st.data())
    def toggle_online(self, data: st.DataObject) -> None:
        host_id = data.draw(st.sampled_from(self.m.host_ids()))
        self.down ^= {host_id}
        gone = self.m.set_online(host_id, host_id not in self.down, self.now)
        for lease in gone.ended:
            assert lease.end_ms == max(self.now, lease.start_ms)
            self._ended(lease)

    @precondition(lambda self: self.m.host_ids())
    @rule(data=st.data(), reliability=st.integers(0, 1_000_000), carbon=st.sampled_from([None, 5]))
    def update_host(self, data: st.DataObject, reliability: int, carbon: int | None) -> None:
        spec = self.m.host(data.draw(st.sampled_from(self.m.host_ids())))
        region = data.draw(st.sampled_from(["r1", "r2"]))
        self.m.update_host(
            HostSpec(
                spec.host_id,
                region,
                spec.gpus,
                spec.cpu_cores,
                spec.memory_gib,
                reliability,
                spec.energy_source,
                carbon,
            )
        )

    # -- leases --------------------------------------------------------------------------

    @rule(data=st.data(), account=st.sampled_from(ACCOUNTS))
    def lease(self, data: st.DataObject, account: str) -> None:
        self._lease(data, account)

    @rule(data=st.data(), account=st.sampled_from(ACCOUNTS))
    def lease_again(self, data: st.DataObject, account: str) -> None:
        """A second rule, so that leases are asked for twice as often as anything else and
        the hosts fill up enough to preempt."""
        self._lease(data, account)

    def _lease(self, data: st.DataObject, account: str) -> None:
        if not self.ledger.status(account, self.now).ok:
            return  # the shell refuses renters without credit before asking the market
        request = data.draw(lease_requests(account, self._id("l")))
        expected = (
            Reference(self.m, self.down, self.draining, self.now).place(request)
            if request.nodes == 1
            else None
        )
        decision = self.m.decide_lease(request, self.now)
        if isinstance(decision, Refusal):
            assert request.nodes > 1 or expected is None, (expected, decision)
            assert decision.message
            self._check_min_winning_bid(request, decision)
            return
        if request.nodes == 1:
            assert expected is not None, decision
            self._check_against_reference(request, decision, expected)
        self.m.apply(decision)
        self._granted(request, decision)

    def _check_against_reference(
        self, request: LeaseRequest, decision: LeaseGranted, expected: Expected
    ) -> None:
        (lease,) = decision.leases
        assert lease.device_type == expected.model
        if expected.how == "reserved":
            # (the host may have withdrawn its offer since: a reservation stays usable)
            assert lease.tier is Tier.RESERVED and not decision.preemptions
            return
        spec = self.m.host(lease.host_id)
        offer = self.m.offer(lease.host_id, lease.device_type)
        assert offer is not None
        assert lease.tier is request.tier
        if expected.how == "free":
            assert not decision.preemptions
            assert _key(request, spec, offer)[:2] == expected.key
        else:
            assert decision.preemptions
            assert max(p.lease.bid or 0 for p in decision.preemptions) == expected.level
            assert _key(request, spec, offer) == expected.key
            assert {p.lease.lease_id for p in decision.preemptions} == expected.victims

    def _check_min_winning_bid(self, request: LeaseRequest, refusal: Refusal) -> None:
        """A quote of a refused interruptible request names the lowest bid that wins."""
        assert refusal.min_winning_bid is None  # lease decisions do not compute it
        if refusal.code is not RefusalCode.NO_CAPACITY or request.tier is not Tier.INTERRUPTIBLE:
            return
        quote = self.m.quote(request, self.now)
        assert not quote.available and quote.refusal is not None
        if quote.refusal.min_winning_bid is None:
            return
        win = quote.refusal.min_winning_bid
        assert request.bid is None or win > request.bid
        assert request.max_price is None or win <= request.max_price
        fields = {f: getattr(request, f) for f in request.__slots__}
        assert isinstance(
            self.m.decide_lease(LeaseRequest(**{**fields, "bid": win}), self.now), LeaseGranted
        )
        if win >= 1:
            lower = LeaseRequest(**{**fields, "bid": win - 1})
            assert isinstance(self.m.decide_lease(lower, self.now), Refusal)

    def _granted(self, request: LeaseRequest, decision: LeaseGranted) -> None:
        for p in decision.preemptions:
            self._check_preemption(p)
            self._ended(p.lease)
        hosts = {x.host_id for x in decision.leases}
        assert len(hosts) == len(decision.leases) == request.nodes
        assert len({x.device_type for x in decision.leases}) == 1
        pins: dict[tuple[str, str, int], set[str]] = {}  # device -> reservations (windows)
        for r in self.m.reservations():
            for b in r.blocks:
                for u in b.devices:
                    pins.setdefault((b.host_id, r.model, u), set()).add(r.reservation_id)
        for lease in decision.leases:
            assert lease.granted_ms == self.now <= lease.start_ms
            assert lease.count == request.count
            offer = self.m.offer(lease.host_id, lease.device_type)
            if lease.tier is Tier.RESERVED:
                r = self.reservations[lease.reservation_id or ""]
                assert r.account == request.account and r.start_ms <= self.now < r.end_ms
                assert lease.rate_micros_per_hour == 0
            else:
                assert offer is not None
                assert lease.tier is request.tier
                if request.max_price is not None:
                    assert lease.price_micros_per_device_hour <= request.max_price
                if lease.tier is Tier.ON_DEMAND:
                    assert lease.price_micros_per_device_hour == offer.on_demand
                else:
                    assert lease.price_micros_per_device_hour >= offer.interruptible_min
                    if request.bid is not None:
                        assert lease.price_micros_per_device_hour == request.bid
                    else:
                        assert lease.price_micros_per_device_hour == offer.interruptible_min
            for u in lease.devices:
                device = (lease.host_id, lease.device_type, u)
                # a reserved device serves only leases inside one of its reservations
                assert not pins.get(device) or lease.reservation_id in pins[device]
                before = self.last_end.get(device, 0)
                assert before is not None, f"{device} leased twice at once"
                assert before <= lease.start_ms, f"{device} overlaps in time"
                self.end_before[(lease.lease_id, device)] = before
                self.last_end[device] = None
            self.history[lease.lease_id] = lease
            self.metered[lease.lease_id] = None

    def _check_preemption(self, p: Preemption) -> None:
        victim = self.history[p.lease.lease_id]
        assert victim.running, "preempted a lease that was not running"
        assert victim.tier is Tier.INTERRUPTIBLE, "preempted an on-demand or reserved lease"
        assert victim.price_micros_per_device_hour < p.by_price, "preempted by an equal/lower bid"
        assert p.deadline_ms == p.notice_ms + GRACE
        # metering stops at the notice (or never started, for a lease still clearing)
        assert p.lease.end_ms == max(p.notice_ms, victim.start_ms)
        assert p.cause in PreemptCause

    def _ended(self, lease: Lease) -> None:
        assert lease.end_ms is not None and lease.end_reason is not None
        assert self.history[lease.lease_id].running
        self.history[lease.lease_id] = lease
        for u in lease.devices:
            device = (lease.host_id, lease.device_type, u)
            before = self.end_before.pop((lease.lease_id, device))
            # A lease that ended before it started (its devices were still clearing) never
            # used them: the device's last use is what it was before.
            self.last_end[device] = lease.end_ms if lease.end_ms > lease.start_ms else before

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        running = self.m.running_leases()
        if running and bool(data.draw(st.booleans())):
            lease = data.draw(st.sampled_from(running))
            self._ended(self.m.release(lease.lease_id, self.now))

    @rule(account=st.sampled_from(ACCOUNTS))
    def end_account(self, account: str) -> None:
        for lease in self.m.end_account(account, self.now):
            self._ended(lease)

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 200_000_000))
    def grant(self, account: str, amount: int) -> None:
        self._grant(account, amount)

    # -- reservations and time -----------------------------------------------------------

    @rule(
        account=st.sampled_from(ACCOUNTS),
        model=st.sampled_from(MODELS),
        count=st.sampled_from([1, 1, 2, 3]),
        nodes=st.sampled_from([1, 1, 2]),
        lead=st.sampled_from([0, 0, 10_000, GRACE, 120_000, 3_600_000]),
        length=st.sampled_from([3_600_000, 7_200_000]),  # the market's shortest window: 1 h
        max_price=st.none() | st.sampled_from(PRICES),
    )
    def reserve(
        self,
        account: str,
        model: str,
        count: int,
        nodes: int,
        lead: int,
        length: int,
        max_price: int | None,
    ) -> None:
        start = self.now + lead
        request = ReserveRequest(
            self._id("r"), account, model, count, start, start + length, nodes, max_price
        )
        decision = self.m.reserve(request, self.now)
        if isinstance(decision, Refusal):
            return
        assert isinstance(decision, ReservationGranted)
        r = decision.reservation
        assert len({b.host_id for b in r.blocks}) == nodes
        for b in r.blocks:
            offer = self.m.offer(b.host_id, model)
            assert offer is not None and b.price_micros_per_device_hour == offer.reserved
            assert max_price is None or b.price_micros_per_device_hour <= max_price
        for p in decision.preemptions:
            assert p.cause is PreemptCause.RESERVATION
            self._check_preemption(p)
            self._ended(p.lease)
        self.reservations[r.reservation_id] = r
        self.metered[r.reservation_id] = None

    @rule(dt=st.sampled_from([1, 1_000, GRACE, 600_000, 3_600_000]))
    def tick(self, dt: int) -> None:
        self.now += dt
        done = self.m.advance(self.now)
        for p in done.preemptions:
            assert p.cause is PreemptCause.RESERVATION
            self._check_preemption(p)
            self._ended(p.lease)
        for lease in done.expired:
            assert lease.tier is Tier.RESERVED and lease.end_reason == "expired"
            self._ended(lease)
        self._meter()
        for account in self.ledger.renters_without_credit():
            for lease in self.m.end_account(account, self.now):
                assert lease.end_reason == "out_of_credit"
                self._ended(lease)

    def _meter(self) -> None:
        for lease_id, until in list(self.metered.items()):
            lease = self.history.get(lease_id)
            if lease is not None:
                due = lease_intervals(lease, until, self.now, METER_MS)
            else:
                due = reservation_intervals(self.reservations[lease_id], until, self.now, METER_MS)
            for iv in due:
                assert iv.end_ms <= self.now
                if lease is not None:
                    assert lease.start_ms <= iv.start_ms
                    assert lease.end_ms is None or iv.end_ms <= lease.end_ms, "charged after end"
                posted = self.ledger.charge(iv, self.now)
                assert not posted.duplicate
                assert self.ledger.charge(iv, self.now).duplicate  # a retried tick
                self.charged[lease_id] = self.charged.get(lease_id, 0) + iv.cost_micros
            if due:
                self.metered[lease_id] = due[-1].end_ms
            if lease is not None and lease.end_ms is not None:
                whole = interval_cost(
                    lease.rate_micros_per_hour, lease.start_ms, lease.start_ms, lease.end_ms
                )
                assert self.charged.get(lease_id, 0) == whole
                del self.metered[lease_id]
            elif lease is None and self.now >= self.reservations[lease_id].end_ms:
                assert self.charged.get(lease_id, 0) == self.reservations[lease_id].cost_micros
                del self.metered[lease_id]

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def indexes_agree_with_a_recount(self) -> None:
        assert self.m.audit() == []

    @invariant()
    def running_leases_agree(self) -> None:
        mine = sorted(k for k, v in self.history.items() if v.running)
        assert [x.lease_id for x in self.m.running_leases()] == mine

    @invariant()
    def ledger_balances(self) -> None:
        assert self.ledger.total() == 0
        again = Ledger.replay(self.ledger.entries, FEE_PPM)
        assert again.balances() == self.ledger.balances()
        for account in ACCOUNTS:
            assert self.ledger.balance(renter_account(account)) == again.balance(
                renter_account(account)
            )


MarketMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_market_state_machine = MarketMachine.TestCase
