"""The live market: the server's one :class:`~crucible.core.market.Market`, kept in step
with the store.

The market core is pure and in memory. This shell builds it from the store when the server
starts (hosts, their offers, the leases of live GPU containers, reservations), brings it up
to date on every scheduler tick (hosts that joined, were lost, changed profile, price or
draining), and turns its decisions into rows: a granted lease is a container (same id), a
preemption stops one. Everything the market decides is written in the transaction of the
tick that decided it, so a crash loses nothing that was acted on; a restart rebuilds the
same state from the rows.

GPU containers are placed by the market (the builder's tier, bid, ``max_price``, region,
reliability and preference). CPU-only containers are placed by the scheduler core and pay
the host's CPU offer on demand (cores x core-hour + GiB x GiB-hour); tiers apply to GPUs.

The market is shared by the scheduler (event loop) and API handlers (thread pool): every
use holds :attr:`LiveMarket.lock`.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import Connection, Text, cast, func, select

from crucible.core.leasing import Held, NotLeased, choice_runs, lease_on_hosts
from crucible.core.market import (
    CPU,
    HostSpec,
    Lease,
    LeaseGranted,
    LeaseRequest,
    Market,
    MarketRules,
    Offer,
    Preemption,
    Prefer,
    Refusal,
    Reservation,
    ReservedBlock,
    Tier,
)
from crucible.core.market.rules import PPM
from crucible.core.scheduling import (
    FunctionDemand,
    HostCapacity,
    LeaseTerms,
    StartContainer,
)
from crucible.protocol.apps import MarketTerms as MarketAsk
from crucible.protocol.gpus import GPU_CATALOG
from crucible.protocol.ids import new_id
from crucible.server.store.tables import containers, host_offers, hosts, reservations
from crucible.settings import Settings

__all__ = [
    "HOST_COLUMNS",
    "LIVE_LEASE_STATES",
    "HostDevices",
    "HostRow",
    "LiveMarket",
    "MarketPlacer",
    "MarketTerms",
    "default_offer",
    "host_reliability_ppm",
    "live_lease_ids",
    "offer_of_row",
]

LIVE_LEASE_STATES = ("pending", "starting", "running", "stopping")
MICROS = 1_000_000


@dataclass(frozen=True)
class MarketTerms:
    """How a function buys its GPUs (from its spec's ``market`` part)."""

    tier: Tier = Tier.ON_DEMAND
    bid: int | None = None
    max_price: int | None = None
    region: str | None = None
    min_reliability_ppm: int = 0
    prefer: Prefer = Prefer.CHEAPEST
    max_carbon_g_per_kwh: int | None = None
    verified: bool = False
    network: bool = False  # the function asks for network egress (its spec's ``network``)

    @classmethod
    def of(cls, market: MarketAsk, *, network: bool = False) -> MarketTerms:
        """The terms of a function's (or pod's) validated ``market`` part; ``network``: its
        spec asks for network egress."""
        return cls(
            tier=Tier(market.tier),
            bid=market.bid_micros,
            max_price=market.max_price_micros,
            region=market.region,
            min_reliability_ppm=market.min_reliability_ppm,
            prefer=Prefer(market.prefer),
            max_carbon_g_per_kwh=market.max_carbon_g_per_kwh,
            verified=market.verified,
            network=network,
        )


def default_offer(device_type: str, settings: Settings) -> Offer:
    """The terms of a host that has not priced a device type: the GPU catalog's reference
    price on demand, fixed fractions of it for interruptible bids and reservations; CPU-only
    capacity at the configured core-hour and GiB-hour prices."""
    if device_type == CPU:
        core = round(settings.price_cpu_core_hour_usd * MICROS)
        mem = round(settings.price_memory_gib_hour_usd * MICROS)
        return Offer(
            on_demand=core,
            interruptible_min=round(core * settings.default_interruptible_fraction),
            reserved=round(core * settings.default_reserved_fraction),
            memory_on_demand=mem,
            memory_interruptible=round(mem * settings.default_interruptible_fraction),
            memory_reserved=round(mem * settings.default_reserved_fraction),
        )
    model = GPU_CATALOG.get(device_type)
    ref = round((model.reference_price_usd if model else 1.0) * MICROS)
    return Offer(
        on_demand=ref,
        interruptible_min=round(ref * settings.default_interruptible_fraction),
        reserved=round(ref * settings.default_reserved_fraction),
    )


def offer_of_row(r: Any) -> Offer:
    return Offer(
        on_demand=r.on_demand,
        interruptible_min=r.interruptible_min,
        reserved=r.reserved,
        memory_on_demand=r.memory_on_demand,
        memory_interruptible=r.memory_interruptible,
        memory_reserved=r.memory_reserved,
    )


def host_reliability_ppm(ended: int, faulted: int, prior: int) -> int:
    """The published reliability score: the share of a host's leases that ended without a
    host fault, counting ``prior`` fault-free leases in its favour (so a new host starts at
    1.0 and one early fault does not sink it)."""
    total = ended + prior
    if total <= 0:
        return PPM
    return (total - faulted) * PPM // total


@dataclass(frozen=True)
class HostDevices:
    """What a host's agent declared when it registered (its inventory and isolation report),
    parsed once per registration: both are written only by a (re-)registration, which bumps
    ``hosts.agent_session``, so the pair (host id, agent_session) names one version."""

    agent_session: int
    inventory_text: str
    inventory: dict[str, Any]
    isolation_text: str | None
    egress: bool  # its agent measured filtered egress (IsolationReport.egress_filter)
    cluster_net: bool  # it can join a cluster's private network
    # (index, model) of each GPU a builder can rent: a model outside the catalog (an
    # unknown card listed under its driver's name) can never be asked for, so the market and
    # the scheduler leave it out.
    gpus: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, agent_session: int, inventory_text: str, isolation_text: str | None) -> HostDevices:
        isolation = (orjson.loads(isolation_text) or {}) if isolation_text else {}
        inventory = orjson.loads(inventory_text)
        return cls(
            agent_session=agent_session,
            inventory_text=inventory_text,
            inventory=inventory,
            gpus=tuple(
                (int(g["index"]), str(g["model"]))
                for g in inventory.get("gpus", [])
                if str(g["model"]) in GPU_CATALOG
            ),
            isolation_text=isolation_text,
            egress=bool(isolation.get("egress_filter")),
            cluster_net=bool(isolation.get("cluster_network")),
        )


@dataclass(frozen=True)
class HostRow:
    row: Any  # hosts columns of HOST_COLUMNS (no inventory: see devices)
    devices: HostDevices

    @property
    def inventory(self) -> dict[str, Any]:
        return self.devices.inventory

    @property
    def egress(self) -> bool:
        """Whether its agent measured filtered egress (IsolationReport.egress_filter)."""
        return self.devices.egress


# A tick reads every host's small columns; the inventory and isolation report (kilobytes of
# JSON per host) only for hosts that registered again since the last read (_SEL_DEVICES).
HOST_COLUMNS = select(
    hosts.c.id,
    hosts.c.region,
    hosts.c.state,
    hosts.c.last_seen_ms,
    hosts.c.agent_session,
    hosts.c.energy_source,
    # The grid's figure where the operator configured a source for the region, else declared.
    func.coalesce(hosts.c.carbon_now_g_per_kwh, hosts.c.carbon_g_per_kwh).label("carbon_g_per_kwh"),
    hosts.c.draining,
    hosts.c.leases_ended,
    hosts.c.leases_faulted,
    hosts.c.account_id,
    hosts.c.isolated,
    hosts.c.verified,
)
_SEL_DEVICES = select(
    hosts.c.id,
    hosts.c.agent_session,
    cast(hosts.c.inventory, Text).label("inventory_text"),
    cast(hosts.c.isolation, Text).label("isolation_text"),
)
# Offers change only through the API (which calls offers_changed); re-read them anyway this
# often, in case another process wrote them.
_OFFERS_REREAD_MS = 5_000


def _spec_of_row(r: Any, devices: HostDevices, prior: int) -> HostSpec:
    return HostSpec(
        host_id=r.id,
        region=r.region,
        gpus=devices.gpus,
        reliability_ppm=host_reliability_ppm(r.leases_ended, r.leases_faulted, prior),
        energy_source=r.energy_source,
        carbon_g_per_kwh=r.carbon_g_per_kwh,
        owner=r.account_id,
        isolated=bool(r.isolated),
        verified=bool(r.verified),
        egress=devices.egress,
        cluster_net=devices.cluster_net,
    )


def reservation_of_row(r: Any) -> Reservation:
    return Reservation(
        reservation_id=r.id,
        account=r.account_id,
        model=r.model,
        blocks=tuple(
            ReservedBlock(b["host_id"], tuple(b["devices"]), int(b["price"])) for b in r.blocks
        ),
        start_ms=r.start_ms,
        end_ms=r.end_ms,
    )


class LiveMarket:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.market = Market(self.rules(settings))
        self._loaded = False
        self._specs: dict[str, HostSpec] = {}
        self._state: dict[str, tuple[bool, bool]] = {}  # host -> (online, draining)
        self._offers: dict[tuple[str, str], Offer] = {}
        self._cpu_offers: dict[str, Offer] = {}
        self._synced_ms: int | None = None
        # Hosts' parsed inventories and isolation reports, by host, as of an agent_session.
        self._devices: dict[str, HostDevices] = {}
        self._seen: dict[str, tuple[Any, ...]] = {}  # host -> its profile at the last sync
        # Hosts looked at again at every sync though their rows did not change (their
        # devices changed while leases still held the old ones).
        self._recheck: set[str] = set()
        self._priced: dict[tuple[str, str], Offer] = {}  # offers hosts set, as last read
        self._offers_dirty = True
        self._offers_read_ms: int | None = None
        # Whether this process's scheduler decides with this market (it leads, or it is the
        # only process). A follower replica's market is only read (quotes, the book): it
        # is rebuilt from the store whenever it is stale, since the leader's decisions
        # reach it through the store only.
        self.leading = True

    def reload(self) -> None:
        """Forget everything and read the store again at the next :meth:`sync` (a replica
        that was a follower becomes the leader, or a follower's view is stale)."""
        with self.lock:
            self.market = Market(self.rules(self.settings))
            self._loaded = False
            self._specs.clear()
            self._state.clear()
            self._offers.clear()
            self._cpu_offers.clear()
            self._synced_ms = None
            self._seen.clear()
            self._recheck.clear()
            self._priced.clear()
            self._offers_dirty = True
            self._offers_read_ms = None

    @staticmethod
    def rules(settings: Settings) -> MarketRules:
        return MarketRules(
            grace_ms=int(settings.preemption_grace_s * 1000),
            # No speed benchmark per model yet: the catalog's reference price stands in.
            model_speed={n: round(m.reference_price_usd * 100) for n, m in GPU_CATALOG.items()},
        )

    # -- keeping in step with the store -------------------------------------------------------

    def read_hosts(self, conn: Connection) -> list[HostRow]:
        """Every host with its parsed inventory, read once per tick for the market and the
        scheduler. A host's inventory and isolation report are read and parsed only when its
        ``agent_session`` moved (it registered again, here or through another replica) since
        they were last read; the rest of its row is read every time."""
        rows = conn.execute(HOST_COLUMNS).all()
        cache = self._devices
        found = self.with_devices(conn, rows)
        if len(cache) > len(rows):  # hosts deleted: forget them
            ids = {r.id for r in rows}
            for gone in [h for h in cache if h not in ids]:
                del cache[gone]
        return found

    def with_devices(self, conn: Connection, rows: Sequence[Any]) -> list[HostRow]:
        """``rows`` (of :data:`HOST_COLUMNS`) with their parsed inventories, read only for
        hosts whose ``agent_session`` moved since last read."""
        cache = self._devices
        stale = [
            r.id
            for r in rows
            if (d := cache.get(r.id)) is None or d.agent_session != r.agent_session
        ]
        for i in range(0, len(stale), 500):
            for x in conn.execute(_SEL_DEVICES.where(hosts.c.id.in_(stale[i : i + 500]))):
                cache[x.id] = HostDevices.of(x.agent_session, x.inventory_text, x.isolation_text)
        return [HostRow(r, cache[r.id]) for r in rows if r.id in cache]

    def sync(
        self,
        conn: Connection,
        now_ms: int,
        rows: list[HostRow] | None = None,
        changed: Collection[str] | None = None,
    ) -> None:
        """Bring hosts and offers up to date (and on the first call, leases and reservations
        too). Hosts whose market profile did not change since the last sync cost a tuple
        comparison; offers are re-read when :meth:`offers_changed` was called, or every
        few seconds. ``changed``: the ids of the hosts among ``rows`` whose rows changed
        since the last sync (the scheduler's fleet view knows); the others are not looked
        at, but when offers are re-read. Hold :attr:`lock`."""
        now_ms = max(now_ms, self.market.now_ms)
        prior = self.settings.reliability_prior_leases
        rows = self.read_hosts(conn) if rows is None else rows
        reread = (
            self._offers_dirty
            or self._offers_read_ms is None
            or now_ms - self._offers_read_ms >= _OFFERS_REREAD_MS
        )
        if not reread and self._loaded and changed is not None:
            wanted = self._recheck.union(changed)
            rows = [h for h in rows if h.row.id in wanted] if wanted else []
        if reread:
            self._priced = {
                (r.host_id, r.device_type): offer_of_row(r)
                for r in conn.execute(select(host_offers))
            }
            self._offers_dirty = False
            self._offers_read_ms = now_ms
        m = self.market
        for h in rows:
            r = h.row
            if reread or r.id not in self._cpu_offers:
                self._cpu_offers[r.id] = self._priced.get((r.id, CPU)) or default_offer(
                    CPU, self.settings
                )
            key = (
                r.region,
                r.state,
                h.devices.inventory_text,
                r.energy_source,
                r.carbon_g_per_kwh,
                r.draining,
                r.leases_ended,
                r.leases_faulted,
                r.isolated,
                r.verified,
                h.devices.isolation_text,
            )
            if not reread and self._seen.get(r.id) == key:
                continue
            self._seen[r.id] = key
            self._recheck.discard(r.id)
            spec = _spec_of_row(r, h.devices, prior)
            old = self._specs.get(r.id)
            stale = False  # the market's devices are no longer the host's
            if old is not None and old.gpus != spec.gpus:
                # Other devices (an agent re-registered with another inventory, more GPUs,
                # fewer or none): the host leaves the market and comes back with them. While
                # leases run or reservations hold devices there, they keep what they were
                # granted: the old devices stay until they end (looked at again every sync),
                # the host takes no new lease on them (it drains), and the rest of its
                # profile (state, offers) still applies.
                if r.id in m.hosts_busy():
                    self._seen.pop(r.id, None)
                    self._recheck.add(r.id)
                    spec = replace(spec, gpus=old.gpus)
                    stale = True
                else:
                    m.remove_host(r.id)
                    self._forget(r.id)
                    del self._specs[r.id]
                    old = None
            if not spec.gpus:
                continue
            if old is None:
                m.add_host(spec)
            elif old != spec:
                m.update_host(spec)
            self._specs[r.id] = spec
            state = (r.state == "ready", bool(r.draining) or stale)
            if self._state.get(r.id) != state:
                m.set_online(r.id, state[0], now_ms)
                m.set_draining(r.id, state[1])
                self._state[r.id] = state
            for model in spec.device_types():
                offer = self._priced.get((r.id, model)) or default_offer(model, self.settings)
                if self._offers.get((r.id, model)) != offer:
                    m.set_offer(r.id, model, offer)
                    self._offers[(r.id, model)] = offer
        if not self._loaded:
            self._restore(conn, now_ms)
            self._loaded = True
        self._synced_ms = now_ms

    def offers_changed(self) -> None:
        """An offer or a host's profile was written: the next sync re-reads them."""
        self._offers_dirty = True
        self._synced_ms = None

    def sync_if_stale(self, conn: Connection, now_ms: int, max_age_ms: int) -> None:
        """:meth:`sync` unless the scheduler did within ``max_age_ms`` (API reads: with the
        scheduler running in this process they never pay for a sync)."""
        if self._synced_ms is None or now_ms - self._synced_ms > max_age_ms:
            if not self.leading:
                self.reload()  # leases and reservations too: the leader changed them
            self.sync(conn, now_ms)

    def cpu_offer(self, host_id: str) -> Offer:
        """The host's terms for CPU-only containers (as of the last :meth:`sync`)."""
        return self._cpu_offers.get(host_id) or default_offer(CPU, self.settings)

    def _forget(self, host_id: str) -> None:
        self._state.pop(host_id, None)
        for key in [k for k in self._offers if k[0] == host_id]:
            del self._offers[key]

    def _has_devices(self, host_id: str, model: str, devices: list[int]) -> bool:
        spec = self._specs.get(host_id)
        have = spec.device_types().get(model, ()) if spec is not None else ()
        return bool(devices) and all(d in have for d in devices)

    def _restore(self, conn: Connection, now_ms: int) -> None:
        # Hosts may have re-registered with other devices while the server was down: what
        # the store holds on devices a host no longer has is left out (the market must not
        # fail to start over it, nor lease devices that are not there).
        rsv = [
            reservation_of_row(r)
            for r in conn.execute(select(reservations).where(reservations.c.end_ms > now_ms))
            if all(self._has_devices(b["host_id"], r.model, b["devices"]) for b in r.blocks)
        ]
        ends = {r.reservation_id: r.end_ms for r in rsv}
        leases = []
        for r in conn.execute(
            select(containers).where(
                containers.c.state.in_(LIVE_LEASE_STATES),
                containers.c.gpu_model.is_not(None),
                containers.c.lease_end_ms.is_(None),
            )
        ):
            if not self._has_devices(r.host_id, r.gpu_model, r.gpu_indices):
                continue
            leases.append(
                Lease(
                    lease_id=r.id,
                    account=r.account_id,
                    host_id=r.host_id,
                    device_type=r.gpu_model,
                    devices=tuple(r.gpu_indices),
                    tier=Tier(r.tier),
                    price_micros_per_device_hour=r.unit_price_micros,
                    granted_ms=r.created_ms,
                    start_ms=max(r.created_ms, r.start_after_ms),
                    reservation_id=r.reservation_id if r.reservation_id in ends else None,
                    ends_by_ms=ends.get(r.reservation_id) if r.reservation_id else None,
                )
            )
        self.market.restore(rsv, leases, now_ms)

    def reconcile(self, live_lease_ids: set[str], now_ms: int) -> None:
        """Release market leases whose container is gone (stopped, lost, or preempted and
        already released). Hold :attr:`lock`."""
        running = self.market.lease_ids()
        if running <= live_lease_ids:  # most ticks: nothing to release (no set is built)
            return
        for lease_id in sorted(running - live_lease_ids):
            self.market.release(lease_id, max(now_ms, self.market.now_ms))

    # -- requests -----------------------------------------------------------------------------

    def request(
        self,
        account: str,
        model: str,
        count: int,
        terms: MarketTerms,
        lease_id: str = "",
    ) -> LeaseRequest:
        return LeaseRequest(
            account=account,
            models=(model,),
            count=count,
            tier=terms.tier,
            bid=terms.bid if terms.tier is Tier.INTERRUPTIBLE else None,
            max_price=terms.max_price,
            region=terms.region,
            min_reliability_ppm=terms.min_reliability_ppm,
            prefer=terms.prefer,
            lease_id=lease_id,
            max_carbon_g_per_kwh=terms.max_carbon_g_per_kwh,
            verified=terms.verified,
            network=terms.network,
        )

    def lease(self, request: LeaseRequest, now_ms: int) -> LeaseGranted | Refusal:
        return self.market.lease(request, max(now_ms, self.market.now_ms))


@dataclass
class Refused:
    code: str
    message: str


class MarketPlacer:
    """The scheduler core's GPU placer for one tick: asks the market for a lease per
    container (the function's GPU choices in fallback order), checks that the chosen host
    also has the CPU and memory, and collects what the grants preempted. Hold the lock."""

    def __init__(
        self,
        live: LiveMarket,
        accounts: dict[str, str],
        terms: dict[str, MarketTerms],
        now_ms: int,
        held: Held | None = None,
    ) -> None:
        self.live = live
        self.accounts = accounts
        self.terms = terms
        self.now_ms = now_ms
        self.held = held  # what a running lease's container holds (core/leasing.py)
        self.preemptions: list[Preemption] = []
        self.refused: dict[str, Refused] = {}  # function id -> why its last try failed
        # The tick's live hosts by id: plan() passes the same list to every call.
        self._hosts: list[HostCapacity] | None = None
        self._by_id: dict[str, HostCapacity] = {}

    def __call__(self, fn: FunctionDemand, hosts_now: list[HostCapacity]) -> StartContainer | None:
        market = self.live.market
        terms = self.terms.get(fn.id, MarketTerms())
        if hosts_now is not self._hosts:
            self._hosts, self._by_id = hosts_now, {h.id: h for h in hosts_now}
        # The function's GPU choices in fallback order (choices asking the same count are
        # one request, so no lease is preempted while another of those models is free),
        # through the lease path the simulator's market runs too (core/leasing.py).
        for models, count in choice_runs(fn.gpus, terms.prefer, market.rules.model_speed):
            cid = new_id("ct")
            request = self.live.request(self.accounts[fn.id], models[0], count, terms, cid)
            outcome = lease_on_hosts(
                market,
                replace(request, models=models),
                self.now_ms,
                hosts=self._by_id,
                cpu=fn.cpu,
                memory_mib=fn.memory_mib,
                disk_mib=fn.disk_mib,
                home=fn.home_host,
                held=self.held,
            )
            if isinstance(outcome, NotLeased):
                self.refused[fn.id] = Refused(outcome.code, outcome.message)
                continue
            lease = outcome.leases[0]
            self.preemptions.extend(outcome.preemptions)
            self.refused.pop(fn.id, None)
            return StartContainer(
                function_id=fn.id,
                host_id=lease.host_id,
                cpu=fn.cpu,
                memory_mib=fn.memory_mib,
                gpu_model=lease.device_type,
                gpu_indices=lease.devices,
                lease=LeaseTerms(
                    container_id=cid,
                    tier=lease.tier.value,
                    unit_price_micros=lease.price_micros_per_device_hour,
                    rate_micros_per_hour=lease.rate_micros_per_hour,
                    reservation_id=lease.reservation_id,
                    start_after_ms=lease.start_ms,
                ),
            )
        return None


def live_lease_ids(conn: Connection) -> set[str]:
    """Ids of the containers whose GPU lease is still held: live, and not ended under them
    (a preempted container in its grace period no longer holds its lease)."""
    return set(
        conn.execute(
            select(containers.c.id).where(
                containers.c.state.in_(LIVE_LEASE_STATES),
                containers.c.gpu_model.is_not(None),
                containers.c.lease_end_ms.is_(None),
            )
        ).scalars()
    )
