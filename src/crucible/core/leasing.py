"""GPU leases for containers and gangs: the one code path the scheduler and the simulator run.

The live scheduler (``server/services/market.py`` ``MarketPlacer`` for a function's
containers, ``server/services/clusters.py`` for a cluster's gang) and the simulator's market
runs (``sim/market_driver.py``) lease GPUs through these functions, so the simulator's market
figures describe the server's own decisions (a test drives both on the same random fleets
and requests and compares every grant and preemption).

- :func:`choice_runs` turns a container's GPU choices (model and count, in fallback
  order) into market requests: consecutive choices with the same count become *one* request
  for all their models, so the market's rule holds for them: no running lease is preempted
  while any of those models has free capacity the request accepts. (Asked one model at a
  time, a request would preempt on its first model before trying free devices of the next.)
- :func:`lease_on_hosts` decides one request (a single lease or a gang: ``nodes`` leases,
  each on its own host) against the market, avoiding hosts that lack the container's CPU or
  memory, and applies it only when every lease's host is among the hosts ready to start
  containers. It then charges each host's CPU, memory and devices, so the same tick's
  indexed placement (:class:`~crucible.core.host_index.HostIndex`) sees them.

Ranking, tiers, bids, reservations and preemption are the market core's
(:mod:`crucible.core.market.placement`); CPU-only containers and GPU containers no market
prices go through the indexed engine (:mod:`crucible.core.placement`) instead.

Pure: no I/O; the caller passes the time (``now_ms``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from crucible.core.market import LeaseGranted, LeaseRequest, Market, Prefer, Refusal, Tier
from crucible.core.scheduling import GpuChoice, HostCapacity, disk_short, gib_text

__all__ = ["Held", "NotLeased", "choice_runs", "lease_on_hosts"]

# Slack for float sums of cores (e.g. 0.1 + 0.2): a request of exactly the free CPU fits.
_CPU_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class NotLeased:
    """Why a request got no lease: the market's refusal code (``no_capacity``, ...) and a
    sentence for the renter."""

    code: str
    message: str


def choice_runs(
    choices: Sequence[GpuChoice], prefer: Prefer, model_speed: Mapping[str, int] | None = None
) -> list[tuple[tuple[str, ...], int]]:
    """The market requests for GPU ``choices``, in the order they are tried, as (models,
    count): one per run of consecutive choices asking the same count. With ``prefer=fastest``
    the choices are first sorted fastest first by ``model_speed`` (as the market orders one
    request's models; equal speeds keep the order given)."""
    ordered = list(choices)
    if prefer is Prefer.FASTEST:
        speed = model_speed or {}
        ordered.sort(key=lambda g: -speed.get(g.model, -1))
    runs: list[tuple[int, list[str]]] = []
    for choice in ordered:
        if runs and runs[-1][0] == choice.count:
            if choice.model not in runs[-1][1]:
                runs[-1][1].append(choice.model)
        else:
            runs.append((choice.count, [choice.model]))
    return [(tuple(models), count) for count, models in runs]


class _ShortOfRoom:
    """The hosts that lack ``cpu`` cores or ``memory_mib`` now, or ``disk_mib`` of free disk,
    answered per host when the market asks (``host_id in view``), so a decision costs what
    the market looks at, not the size of the fleet."""

    __slots__ = ("cpu", "disk_mib", "hosts", "memory_mib")

    def __init__(
        self, hosts: Mapping[str, HostCapacity], cpu: float, memory_mib: int, disk_mib: int
    ) -> None:
        self.hosts, self.cpu, self.memory_mib, self.disk_mib = hosts, cpu, memory_mib, disk_mib

    def __contains__(self, host_id: object) -> bool:
        h = self.hosts.get(host_id) if isinstance(host_id, str) else None
        return h is not None and (
            self.cpu > h.cpu - h.used_cpu + _CPU_EPS
            or self.memory_mib > h.memory_mib - h.used_memory_mib
            or disk_short(h, self.disk_mib)
        )

    def any(self) -> bool:
        return any(h in self for h in self.hosts)


# What a running lease's container holds, by lease id: (cores, MiB of memory), or None.
Held = Callable[[str], tuple[float, int] | None]


class _ShortEvenPreempting(_ShortOfRoom):
    """The hosts that would lack the room even with every interruptible lease on them
    preempted (their containers' cores and memory given back): the only ones a preemption
    cannot make room on."""

    __slots__ = ("held", "market")

    def __init__(
        self,
        hosts: Mapping[str, HostCapacity],
        cpu: float,
        memory_mib: int,
        disk_mib: int,
        market: Market,
        held: Held,
    ) -> None:
        super().__init__(hosts, cpu, memory_mib, disk_mib)
        self.market, self.held = market, held

    def __contains__(self, host_id: object) -> bool:
        h = self.hosts.get(host_id) if isinstance(host_id, str) else None
        if h is None:
            return False
        if disk_short(h, self.disk_mib):
            return True
        cpu, memory = h.cpu - h.used_cpu, h.memory_mib - h.used_memory_mib
        for lease in self.market.host_leases(h.id):
            got = self.held(lease.lease_id) if lease.tier is Tier.INTERRUPTIBLE else None
            if got is not None:
                cpu, memory = cpu + got[0], memory + got[1]
        return self.cpu > cpu + _CPU_EPS or self.memory_mib > memory


def _room_after_preempting(
    decision: LeaseGranted,
    hosts: Mapping[str, HostCapacity],
    held: Held,
    cpu: float,
    memory_mib: int,
) -> bool:
    """Whether each lease's host has the cores and memory once the leases the decision
    preempts there have stopped."""
    for lease in decision.leases:
        h = hosts.get(lease.host_id)
        if h is None:
            return False
        free_cpu, free_memory = h.cpu - h.used_cpu, h.memory_mib - h.used_memory_mib
        for p in decision.preemptions:
            got = held(p.lease.lease_id) if p.lease.host_id == h.id else None
            if got is not None:
                free_cpu, free_memory = free_cpu + got[0], free_memory + got[1]
        if cpu > free_cpu + _CPU_EPS or memory_mib > free_memory:
            return False
    return True


class _AllBut:
    """Every host but ``home`` (and ``home`` too when it is short of room), to the market's
    ``avoid``."""

    __slots__ = ("home", "short")

    def __init__(self, home: str, short: _ShortOfRoom | None) -> None:
        self.home, self.short = home, short

    def __contains__(self, host_id: object) -> bool:
        return host_id != self.home or (self.short is not None and host_id in self.short)


def lease_on_hosts(
    market: Market,
    request: LeaseRequest,
    now_ms: int,
    *,
    hosts: Mapping[str, HostCapacity] | None = None,
    cpu: float = 0.0,
    memory_mib: int = 0,
    disk_mib: int = 0,
    home: str | None = None,
    held: Held | None = None,
) -> LeaseGranted | NotLeased:
    """Decide ``request`` and, when granted, apply it to ``market`` and charge ``hosts``.

    ``hosts`` are the hosts ready to start containers by id, with their current usage (``None``:
    the caller runs no containers on them, as the simulator's market runs, and every market
    host counts as ready with room). No lease goes to a host that lacks ``cpu`` cores or
    ``memory_mib`` for each of its containers, or ``disk_mib`` of free disk: the market takes
    the best host that has them rather than refusing because the best one by price is short
    of cores. A grant whose
    hosts are not all ready is not applied (the market is unchanged). The time is
    ``max(now_ms, market.now_ms)``, so a market that has seen a later time does not refuse
    the request for going back in time. ``home``: a host the request belongs on (a pod's,
    which holds its disk), taken when the market grants it there without preempting anyone.
    ``held``: what each running lease's container holds (cores, memory), so that a host
    short of room now is still taken when preempting interruptible leases there (preemption,
    last, as the market's own) gives it the room; without it such hosts are passed over.
    """
    now = max(now_ms, market.now_ms)
    short = None if hosts is None else _ShortOfRoom(hosts, cpu, memory_mib, disk_mib)
    decision: LeaseGranted | Refusal | None = None
    if home is not None and (hosts is None or home in hosts):
        there = market.decide_lease(request, now, avoid=_AllBut(home, short))
        if isinstance(there, LeaseGranted) and not there.preemptions:
            decision = there
    if decision is None:
        decision = market.decide_lease(request, now, avoid=() if short is None else short)
    if isinstance(decision, Refusal) and short is not None and held is not None and short.any():
        # Nothing with room now: a host short of it whose interruptible leases, preempted,
        # give it back (their bids below what this request pays there, as ever).
        assert hosts is not None
        roomy = _ShortEvenPreempting(hosts, cpu, memory_mib, disk_mib, market, held)
        second = market.decide_lease(request, now, avoid=roomy)
        if isinstance(second, LeaseGranted) and _room_after_preempting(
            second, hosts, held, cpu, memory_mib
        ):
            decision = second
    if isinstance(decision, Refusal):
        if (
            short is not None
            and short.any()
            and not isinstance(market.decide_lease(request, now), Refusal)
        ):
            models = " or ".join(request.models)
            return NotLeased(
                "no_capacity",
                f"the hosts that have the {models} GPUs for it lack the CPU or memory asked "
                f"(cpu={cpu:g}, memory={memory_mib} MiB)"
                if not disk_mib
                else f"the hosts that have the {models} GPUs for it lack the CPU, memory or "
                f"free disk asked (cpu={cpu:g}, memory={memory_mib} MiB, "
                f"disk={gib_text(disk_mib)})",
            )
        return NotLeased(decision.code.value, decision.message)
    if hosts is not None:
        for lease in decision.leases:
            if lease.host_id not in hosts:
                return NotLeased(
                    "no_capacity",
                    f"host {lease.host_id} has the GPUs but is not ready to start containers",
                )
            h = hosts[lease.host_id]
            have = {i for i, m in h.gpus if m == lease.device_type}
            if not set(lease.devices) <= have:
                # The market still holds devices the host's agent no longer reports (it
                # registered again with other GPUs) for a reservation made before: a
                # container there would be handed devices that do not exist.
                return NotLeased(
                    "no_capacity",
                    f"host {lease.host_id} no longer has the {lease.device_type} devices "
                    f"{', '.join(map(str, lease.devices))} "
                    + (f"of reservation {lease.reservation_id} " if lease.reservation_id else "")
                    + "(its agent registered other GPUs since)",
                )
    market.apply(decision)
    if hosts is not None:
        for lease in decision.leases:
            h = hosts[lease.host_id]
            h.used_cpu += cpu
            h.used_memory_mib += memory_mib
            h.used_gpus.update(lease.devices)
    return decision
