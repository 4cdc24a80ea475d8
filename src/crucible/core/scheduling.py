"""Scheduler v0: the pure core.

Given a snapshot (functions with their queued work and containers, hosts with their capacity)
and the time, :func:`plan` says which containers to start where, which to stop, and which
functions can never be placed. It does no I/O and reads no clock; the server's loop and the
simulator drive it.

Scaling: the number of containers a function wants comes from :mod:`.autoscaler` (backlog,
arrival rate, start time, ``min_containers``, ``buffer_containers``, ``max_containers``).
Containers above that number that have been idle for the function's scale-down window are
stopped, so a function scales back to zero (or to its ``min_containers``).

Placement: a container's request is a CPU share, memory, and optionally a GPU model and
count in fallback order; the first GPU choice that fits anywhere wins. GPU containers are
placed by the ``gpu_placer`` the server passes (the market: price, tiers, preemption); every
other container goes through the indexed placement engine the simulator drives
(:class:`~crucible.core.host_index.HostIndex` over :class:`~crucible.core.placement.Cluster`),
whose ``best-fit`` policy takes the tightest fit (fewest free GPUs of that model left, then
least free CPU, ties to the lower host id), which packs work and keeps large hosts free for
large requests; CPU-only work goes to the hosts with the fewest free GPUs (GPU-less ones
first), so it does not take the cores GPU work needs.

Idle containers yield to queued work: a container its function no longer wants (idle, no
input in flight, only waiting out its scale-down window) is stopped early when queued work of
another function fits no live host now, nor once the containers already stopping are gone.
The longest idle go first, on the host where the fewest must go. A GPU container yields only to
work of its own account (its lease is the renter's: on-demand leases are not taken by other
renters, and interruptible ones already yield to higher bids in the market); a CPU-only
container, which holds no lease, yields to anyone's. The freed room is not used in the same
plan: the work is placed once the stopped containers have ended (their resources show as
``freeing_*`` on the host meanwhile, so one shortage evicts only once).

Tenancy: a host that does not isolate fully (its agent's measured report) runs only its
owner's code, and a function that asks for verified hosts runs only on hosts whose
self-test matched the catalog (:func:`may_run`); when no host may ever run a function for
that reason, it is unschedulable with a reason that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from crucible.core.autoscaler import Load, Scale, ScalingPolicy, decide
from crucible.core.host_index import HostIndex

__all__ = [
    "ContainerView",
    "FunctionDemand",
    "GpuChoice",
    "GpuPlacer",
    "HostCapacity",
    "LeaseTerms",
    "Plan",
    "Policy",
    "StartContainer",
    "StopContainer",
    "Unschedulable",
    "disk_short",
    "gib_text",
    "may_run",
    "never_runs",
    "plan",
    "retry_delay_ms",
]


@dataclass(frozen=True)
class GpuChoice:
    model: str
    count: int


@dataclass
class HostCapacity:
    id: str
    cpu: float
    memory_mib: int
    gpus: tuple[tuple[int, str], ...]  # (device index, model)
    # Free disk its agent measured when it registered (None: not known, not checked). Only
    # work that asks for disk (a pod's) is held to it.
    disk_mib: int | None = None
    used_cpu: float = 0.0
    used_memory_mib: int = 0
    used_gpus: set[int] = field(default_factory=set)
    # Held by containers told to stop (included in used_*): room once they have ended.
    freeing_cpu: float = 0.0
    freeing_memory_mib: int = 0
    freeing_gpus: set[int] = field(default_factory=set)
    # Tenancy (see may_run): the account that registered the host, whether it isolates
    # fully, whether its self-test verified it. The defaults: open to every account.
    owner: str = ""
    isolated: bool = True
    verified: bool = False
    egress: bool = True  # it filters sandboxes' network egress (IsolationReport.egress_filter)
    region: str = "local"
    # Its owner is draining it: it takes no new container (those it runs finish).
    draining: bool = False

    def free_gpus(self, model: str) -> list[int]:
        return [i for i, m in self.gpus if m == model and i not in self.used_gpus]

    def total_gpus(self, model: str) -> int:
        return sum(1 for _, m in self.gpus if m == model)


@dataclass(frozen=True)
class ContainerView:
    id: str
    host_id: str
    state: str  # pending | starting | running
    created_ms: int
    last_active_ms: int
    busy: bool
    # What it holds (for making room when it is stopped early).
    cpu: float = 0.0
    memory_mib: int = 0
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class FunctionDemand:
    id: str
    cpu: float
    memory_mib: int
    gpus: tuple[GpuChoice, ...]
    queued: int
    running: int
    oldest_queued_ms: int | None
    oldest_running_started_ms: int | None
    avg_exec_ms: float | None
    containers: tuple[ContainerView, ...]
    max_containers: int
    scaledown_window_ms: int
    active: bool = True
    min_containers: int = 0
    buffer_containers: int = 0
    arrivals_per_s: float = 0.0
    start_ms: float = 0.0  # measured time for a container to become ready
    # Crash-loop backoff: no new container before this time (see loop._crash_loops).
    start_not_before_ms: int = 0
    inputs_per_container: int = 1  # @crucible.concurrent's target
    # Whose work it is: a host that does not isolate fully runs only its owner's code, and
    # GPU containers yield (when idle) only to work of their own account.
    account_id: str = ""
    verified: bool = False  # run only on verified hosts
    network: bool = False  # asks for network egress (network=True or an allowlist)
    # What the builder made it as, for the reasons shown to them: "function", or "pod" (a
    # pod is one warm container of a function of its own, and has no gpu=[...] fallbacks).
    noun: str = "function"
    # Disk on the host's filesystem (a pod's disk): only hosts with that much free run it.
    disk_mib: int = 0
    # The host that holds a pod's disk from an earlier run: placed there when it has the
    # room (and may run it), so a restarted pod finds its files.
    home_host: str | None = None
    # Only hosts of this region (MarketTerms.region; None: any). GPU work is held to it by
    # the market, the rest by may_run.
    region: str | None = None


@dataclass(frozen=True)
class Policy:
    unschedulable_grace_ms: int = 10_000
    container_start_timeout_ms: int = 120_000
    # Aim to drain a function's backlog within this time when sizing its container pool.
    target_drain_ms: int = 2_000
    # Stop idle containers early when queued work of other functions needs their room.
    evict_idle: bool = True


@dataclass(frozen=True)
class StartContainer:
    function_id: str
    host_id: str
    cpu: float
    memory_mib: int
    gpu_model: str | None
    gpu_indices: tuple[int, ...]
    # Set when a market placed it (GPU containers): the lease is the container.
    lease: LeaseTerms | None = None


@dataclass(frozen=True)
class LeaseTerms:
    """What the market granted for a container: its id (the lease id), tier, unit price, the
    rate metering charges, its reservation, and when its devices are clear to start on."""

    container_id: str
    tier: str
    unit_price_micros: int
    rate_micros_per_hour: int
    reservation_id: str | None
    start_after_ms: int


# Places one container of a GPU function on live hosts (updating their usage), or returns
# None when it cannot now. The server passes the market; without one, GPU containers go
# through the placement engine like the others (_place below).
GpuPlacer = Callable[[FunctionDemand, list[HostCapacity]], StartContainer | None]


@dataclass(frozen=True)
class StopContainer:
    container_id: str
    reason: str  # idle | app_stopped | start_timeout | yield (made room for queued work)


@dataclass(frozen=True)
class Unschedulable:
    function_id: str
    message: str


@dataclass
class Plan:
    start: list[StartContainer] = field(default_factory=list)
    stop: list[StopContainer] = field(default_factory=list)
    unschedulable: list[Unschedulable] = field(default_factory=list)
    # The autoscaler's answer per function, with its reason (the loop logs changes).
    scales: dict[str, Scale] = field(default_factory=dict)
    # Why queued work of a function is not placed now (function id -> reason in words).
    waiting: dict[str, str] = field(default_factory=dict)
    # Functions idle containers were stopped for in this plan: pass them back as
    # ``promised`` until they are placed, so the room goes to them and not to other work.
    made_room: set[str] = field(default_factory=set)


def retry_delay_ms(
    attempt: int, initial_delay_s: float, backoff_coefficient: float, max_delay_s: float
) -> int:
    """Delay before retry number ``attempt`` (1 = the first retry): exponential, capped."""
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    delay = initial_delay_s * backoff_coefficient ** (attempt - 1)
    return int(min(delay, max_delay_s) * 1000)


def desired_containers(fn: FunctionDemand, now_ms: int, policy: Policy) -> Scale:
    """What the autoscaler wants for ``fn`` now (see :mod:`.autoscaler`)."""
    return decide(
        ScalingPolicy(
            min_containers=fn.min_containers,
            max_containers=fn.max_containers,
            buffer_containers=fn.buffer_containers,
            target_drain_ms=policy.target_drain_ms,
            inputs_per_container=fn.inputs_per_container,
        ),
        Load(
            queued=fn.queued,
            running=fn.running,
            arrivals_per_s=fn.arrivals_per_s,
            avg_exec_ms=fn.avg_exec_ms,
            oldest_running_age_ms=(
                None
                if fn.oldest_running_started_ms is None
                else now_ms - fn.oldest_running_started_ms
            ),
            start_ms=fn.start_ms,
            active=fn.active,
        ),
    )


def _choices(fn: FunctionDemand) -> tuple[GpuChoice | None, ...]:
    return fn.gpus if fn.gpus else (None,)


def disk_short(host: HostCapacity, disk_mib: int) -> bool:
    """Whether ``host`` lacks ``disk_mib`` of free disk (a host that did not say has room)."""
    return disk_mib > 0 and host.disk_mib is not None and disk_mib > host.disk_mib


def _fits(host: HostCapacity, fn: FunctionDemand, choice: GpuChoice | None, *, now: bool) -> bool:
    if disk_short(host, fn.disk_mib):
        return False
    cpu_free = host.cpu - (host.used_cpu if now else 0.0)
    mem_free = host.memory_mib - (host.used_memory_mib if now else 0)
    if fn.cpu > cpu_free + 1e-9 or fn.memory_mib > mem_free:
        return False
    if choice is None:
        return True
    have = len(host.free_gpus(choice.model)) if now else host.total_gpus(choice.model)
    return have >= choice.count


def may_run(host: HostCapacity, fn: FunctionDemand) -> bool:
    """Whether ``fn``'s code may run on ``host`` at all: strangers' code only where the host
    isolates fully (and filters egress, when it asks for network), only on verified hosts
    when the function asks for them, and only in the region it asks for."""
    own = host.owner == fn.account_id
    return (
        (host.isolated or own)
        and (host.egress or own or not fn.network)
        and (host.verified or not fn.verified)
        and (fn.region is None or host.region == fn.region)
    )


def _place(index: HostIndex, fn: FunctionDemand, barred: Collection[str]) -> StartContainer | None:
    """One container of ``fn`` through the placement engine: the first GPU choice (in the
    function's order) that fits a host ``fn`` may run on, not in ``barred``."""
    for choice in _choices(fn):
        placed = index.place(
            fn.cpu,
            fn.memory_mib,
            choice.model if choice else None,
            choice.count if choice else 0,
            exclude=barred,
            prefer=fn.home_host,
        )
        if placed is None:
            continue
        host, indices = placed
        return StartContainer(
            function_id=fn.id,
            host_id=host.id,
            cpu=fn.cpu,
            memory_mib=fn.memory_mib,
            gpu_model=choice.model if choice else None,
            gpu_indices=indices,
        )
    return None


def _describe_request(fn: FunctionDemand) -> str:
    parts = [f"cpu={fn.cpu:g}", f"memory={fn.memory_mib} MiB"]
    if fn.gpus:
        parts.append("gpu=" + " or ".join(f"{g.model}:{g.count}" for g in fn.gpus))
    if fn.disk_mib:
        parts.append(f"disk={gib_text(fn.disk_mib)}")
    if fn.region is not None:
        parts.append(f"region={fn.region}")
    return ", ".join(parts)


def gib_text(mib: int) -> str:
    """MiB in GiB for people: ``0.5 GiB``, ``100 GiB``, ``61,440 GiB`` (never 6.144e+04)."""
    gib = mib / 1024
    return f"{gib:,.0f} GiB" if gib >= 100 else f"{gib:.3g} GiB"


def _describe_largest(hosts: list[HostCapacity], *, disk: bool = False) -> str:
    """The largest host's cores, memory and GPUs per model (and free disk, with ``disk``)."""
    if not hosts:
        return _NO_HOST
    # Whole hosts, not each figure's maximum over different hosts ("100000 cores, 3246368
    # MiB" read as one host that could run a 1,000-core function, while none could).
    most_cpu = max(hosts, key=lambda h: (h.cpu, h.memory_mib, h.id))
    most_mem = max(hosts, key=lambda h: (h.memory_mib, h.cpu, h.id))
    models: dict[str, int] = {}
    for h in hosts:
        for _, m in h.gpus:
            models[m] = max(models.get(m, 0), h.total_gpus(m))
    gpus = ", ".join(f"{n}x{m}" for m, n in sorted(models.items())) or "none"
    if most_cpu is most_mem:
        sizes = f"the largest host has {most_cpu.cpu:g} cores and {most_cpu.memory_mib} MiB memory"
    else:
        sizes = (
            f"the host with the most cores has {most_cpu.cpu:g} cores and "
            f"{most_cpu.memory_mib} MiB memory, the one with the most memory "
            f"{most_mem.cpu:g} cores and {most_mem.memory_mib} MiB"
        )
    text = f"{sizes}; GPUs per host: {gpus}"
    disks = [h.disk_mib for h in hosts if h.disk_mib is not None]
    if disk and disks:
        text += f"; free disk: {gib_text(max(disks))} at most"
    return text


@dataclass(frozen=True)
class _Idle:
    """A container its function no longer wants, still in its scale-down window."""

    view: ContainerView
    account_id: str


def _free_after_stops(host: HostCapacity, fn: FunctionDemand, choice: GpuChoice | None) -> bool:
    """Whether ``fn`` fits ``host`` once the containers told to stop have ended."""
    if fn.cpu > host.cpu - host.used_cpu + host.freeing_cpu + 1e-9:
        return False
    if fn.memory_mib > host.memory_mib - host.used_memory_mib + host.freeing_memory_mib:
        return False
    if choice is None:
        return True
    usable = [
        i
        for i, m in host.gpus
        if m == choice.model and (i not in host.used_gpus or i in host.freeing_gpus)
    ]
    return len(usable) >= choice.count


def _mark_freeing(host: HostCapacity, c: ContainerView) -> None:
    host.freeing_cpu += c.cpu
    host.freeing_memory_mib += c.memory_mib
    host.freeing_gpus.update(c.gpu_indices)


def _claim_freeing(host: HostCapacity, fn: FunctionDemand, choice: GpuChoice | None) -> None:
    """Promise room that is being freed to ``fn``, so other work does not count on it."""
    host.freeing_cpu = max(0.0, host.freeing_cpu - fn.cpu)
    host.freeing_memory_mib = max(0, host.freeing_memory_mib - fn.memory_mib)
    if choice is not None:
        freed = sorted(i for i, m in host.gpus if m == choice.model and i in host.freeing_gpus)
        host.freeing_gpus.difference_update(freed[: choice.count])


def _room_without(
    host: HostCapacity, stopped: list[_Idle], fn: FunctionDemand, choice: GpuChoice | None
) -> bool:
    """Whether ``fn`` would fit ``host`` once ``stopped`` (and those already stopping) end."""
    trial = replace(host, used_gpus=set(host.used_gpus), freeing_gpus=set(host.freeing_gpus))
    for c in stopped:
        _mark_freeing(trial, c.view)
    return _free_after_stops(trial, fn, choice)


def _make_room(
    fn: FunctionDemand, hosts: list[HostCapacity], idle: list[_Idle], stops: list[StopContainer]
) -> bool:
    """Room for one container of ``fn`` that fits no live host now: the room being freed if
    that is enough, else the fewest longest-idle containers on one host are stopped (appended
    to ``stops``). False when no idle container can make room."""
    by_id = {h.id: h for h in hosts}
    # A stranger's work evicts nothing elsewhere; a draining host takes nothing new.
    hosts = [h for h in hosts if may_run(h, fn) and not h.draining]
    for choice in _choices(fn):
        for h in hosts:
            if _free_after_stops(h, fn, choice):
                _claim_freeing(h, fn, choice)
                return True
    best: tuple[int, int, str] | None = None
    best_pick: list[_Idle] = []
    best_choice: GpuChoice | None = None
    for choice in _choices(fn):
        for h in hosts:
            mine = sorted(
                (
                    c
                    for c in idle
                    if c.view.host_id == h.id
                    and (not c.view.gpu_indices or c.account_id == fn.account_id)
                ),
                key=lambda c: (c.view.last_active_ms, c.view.id),
            )
            for n in range(1, len(mine) + 1):
                if _room_without(h, mine[:n], fn, choice):
                    # Keep only those needed (an idle CPU-only container does not free a GPU).
                    pick = mine[:n]
                    for c in reversed(mine[:n]):
                        rest = [x for x in pick if x is not c]
                        if _room_without(h, rest, fn, choice):
                            pick = rest
                    rank = (len(pick), pick[0].view.last_active_ms, h.id)
                    if best is None or rank < best:
                        best, best_pick, best_choice = rank, pick, choice
                    break
        if best is not None:
            break  # the first GPU choice that idle containers can make room for
    if best is None:
        return False
    host = by_id[best[2]]
    for c in best_pick:
        idle.remove(c)
        _mark_freeing(host, c.view)
        stops.append(StopContainer(c.view.id, "yield"))
    _claim_freeing(host, fn, best_choice)
    return True


def _another_gpu(fn: FunctionDemand) -> str:
    if fn.noun == "pod":
        return "ask for another GPU model (--gpu)"
    return "add a fallback with gpu=[...]"


# How each of _never_reason's verdicts begins (read back by never_runs).
_NEVER_LEADS = (
    "no host can ever run this ",
    "no host in region=",
    "no fully isolated host can run this ",
    "no host that filters network egress can run this ",
    "no verified host can run this ",
)
_NO_HOST = "no host is registered"


def never_runs(reason: str | None) -> bool:
    """Whether ``reason`` (a waiting reason of the plan) says that no host the exchange
    knows could ever run the work as asked: not a busy fleet, nor an empty one (whose
    hosts have not joined yet)."""
    return reason is not None and reason.startswith(_NEVER_LEADS) and _NO_HOST not in reason


def _never_reason(fn: FunctionDemand, known: list[HostCapacity]) -> str:
    """Why no known host may ever run ``fn``, in words the builder can act on."""
    request = _describe_request(fn)
    sized = [h for h in known if any(_fits(h, fn, ch, now=False) for ch in _choices(fn))]
    if not sized:
        return (
            f"{_NEVER_LEADS[0]}{fn.noun} ({request}): "
            f"{_describe_largest(known, disk=fn.disk_mib > 0)}. "
            f"Lower the request, {_another_gpu(fn)}, or add a host that has it."
        )
    if fn.region is not None and not any(h.region == fn.region for h in sized):
        where = sorted({h.region for h in sized})
        return (
            f"{_NEVER_LEADS[1]}{fn.region} can run this {fn.noun} ({request}): the hosts big "
            f"enough are in {', '.join(where)}. Widen the region, or add a host in "
            f"{fn.region}."
        )
    sized = [h for h in sized if fn.region is None or h.region == fn.region]
    if not any(h.isolated or h.owner == fn.account_id for h in sized):
        return (
            f"{_NEVER_LEADS[2]}{fn.noun} ({request}): the hosts big enough "
            "run only their owner's code (they do not isolate fully, e.g. runtime process, or "
            "their account is not a provider the operator approved). Add a fully isolated "
            "host of a provider (docs/sandbox.md, docs/operators.md), or run it on a host of "
            "your own account."
        )
    if fn.network and not any(h.egress or h.owner == fn.account_id for h in sized):
        return (
            f"{_NEVER_LEADS[3]}{fn.noun} ({request}): it asks "
            "for network=, and the hosts big enough cannot keep a sandbox's egress away from "
            "the host (slirp4netns and nftables, agent as root: docs/hosts.md), so they give "
            "network only to their owner's code. Drop network=, or add such a host."
        )
    return (
        f"{_NEVER_LEADS[4]}{fn.noun} ({request}): it asks for verified=True, and "
        "the hosts big enough did not pass the self-test against the GPU catalog "
        "(`crucible hosts` shows why). Drop verified=True, or add a verified host."
    )


def plan(
    now_ms: int,
    functions: list[FunctionDemand],
    hosts: list[HostCapacity],
    policy: Policy,
    known_hosts: list[HostCapacity] | None = None,
    gpu_placer: GpuPlacer | None = None,
    promised: Collection[str] = (),
) -> Plan:
    """Decide container starts and stops. ``hosts`` are live hosts with their current usage;
    they are updated in place as containers are placed (pass copies to keep the originals).

    ``known_hosts`` (default: ``hosts``) decide whether a request can *ever* be met: include
    hosts that are briefly lost, so a heartbeat blip of the only big host does not fail the
    calls waiting for it.

    ``gpu_placer`` places containers that need GPUs (the server passes the market, which
    chooses the host by price and may preempt); without it they are placed like the others.

    Queued work that fits nowhere now makes idle containers of other functions yield (see the
    module docstring), unless ``policy.evict_idle`` is off. ``promised`` are functions that
    earlier plans stopped idle containers for (``Plan.made_room``): they are placed before
    other work, so the room made for them is theirs (a GPU freed by its own account's idle
    container does not go to another account's older work)."""
    known = hosts if known_hosts is None else known_hosts
    by_host = {h.id: h for h in hosts}
    result = Plan()
    idle: list[_Idle] = []  # containers that may be stopped early to make room
    wanting: list[tuple[FunctionDemand, int]] = []
    for fn in functions:
        live = list(fn.containers)
        # Containers that never became ready are replaced.
        for c in fn.containers:
            if c.state in ("pending", "starting") and (
                now_ms - c.created_ms >= policy.container_start_timeout_ms
            ):
                result.stop.append(StopContainer(c.id, "start_timeout"))
                live.remove(c)

        if not fn.active:
            result.stop.extend(StopContainer(c.id, "app_stopped") for c in live)
            continue

        scale = desired_containers(fn, now_ms, policy)
        result.scales[fn.id] = scale
        want = scale.containers
        if len(live) > want:
            surplus = sorted(
                (c for c in live if not c.busy and c.state == "running"),
                key=lambda c: c.last_active_ms,
            )[: len(live) - want]
            for c in surplus:
                if now_ms - c.last_active_ms >= fn.scaledown_window_ms:
                    result.stop.append(StopContainer(c.id, "idle"))
                else:
                    idle.append(_Idle(c, fn.account_id))
            continue
        if fn.queued == 0 and fn.running == 0 and fn.arrivals_per_s > 0:
            # Kept only for a recent arrival rate, with nothing queued or running (a burst
            # that ended: the rate decays over tens of seconds): idle containers beyond what
            # min_containers and buffer_containers keep yield to others' queued work, as
            # one idling out its window does (another tenant's call waited 45 s).
            floor = desired_containers(replace(fn, arrivals_per_s=0.0), now_ms, policy)
            spare = sorted(
                (c for c in live if not c.busy and c.state == "running"),
                key=lambda c: c.last_active_ms,
            )[: max(0, len(live) - floor.containers)]
            idle.extend(_Idle(c, fn.account_id) for c in spare)
        wanting.append((fn, want - len(live)))

    # Room held by containers stopped above is being freed.
    stopped = {s.container_id for s in result.stop}
    for fn in functions:
        for c in fn.containers:
            if c.id in stopped and c.host_id in by_host:
                _mark_freeing(by_host[c.host_id], c)

    wanting.sort(key=lambda w: w[0].id not in promised)  # stable: otherwise oldest work first
    index = HostIndex(hosts)  # its views are built on first use
    barred_for: dict[tuple[str, bool, bool, int, str | None], frozenset[str]] = {}
    for fn, missing in wanting:
        if missing <= 0 or now_ms < fn.start_not_before_ms:
            continue
        ever_fits = any(
            may_run(h, fn) and _fits(h, fn, ch, now=False) for h in known for ch in _choices(fn)
        )
        if not ever_fits:
            waited = now_ms - (fn.oldest_queued_ms if fn.oldest_queued_ms is not None else now_ms)
            if fn.queued and waited >= policy.unschedulable_grace_ms:
                result.unschedulable.append(Unschedulable(fn.id, _never_reason(fn, known)))
            elif fn.queued or fn.min_containers:  # a pod waits with no calls queued
                result.waiting[fn.id] = _never_reason(fn, known)
            continue
        if fn.queued and not any(
            not h.draining and may_run(h, fn) and _fits(h, fn, ch, now=False)
            for h in hosts
            for ch in _choices(fn)
        ):
            could = [
                h
                for h in known
                if may_run(h, fn) and any(_fits(h, fn, ch, now=False) for ch in _choices(fn))
            ]
            lost = sum(1 for h in could if h.id not in by_host)
            draining = sum(1 for h in could if h.id in by_host and h.draining)
            result.waiting[fn.id] = (
                f"no live host can run this {fn.noun} ({_describe_request(fn)}): "
                f"{lost} host(s) that could have stopped answering (their agents are down "
                "or unreachable). The calls wait for one to come back; check `crucible hosts`."
                if lost or not draining
                else f"no host that can run this {fn.noun} ({_describe_request(fn)}) takes new "
                f"work: {draining} host(s) that could are draining (their owners are taking them "
                "out of service). The calls wait for another host; check `crucible hosts`."
            )
            continue  # nothing live may run it: no placement (nor market refusal) to try
        by_market = gpu_placer is not None and bool(fn.gpus)
        barred: Collection[str] = ()
        if not by_market:
            # Hosts fn may not run on (may_run and the disk depend only on these fields).
            # A draining host takes no new container (the market holds GPU work to that).
            who = (fn.account_id, fn.verified, fn.network, fn.disk_mib, fn.region)
            if who not in barred_for:
                barred_for[who] = frozenset(
                    h.id
                    for h in hosts
                    if h.draining or not may_run(h, fn) or disk_short(h, fn.disk_mib)
                )
            barred = barred_for[who]
        for n in range(missing):
            if gpu_placer is not None and by_market:
                start = gpu_placer(fn, hosts)
                if start is not None:
                    index.refresh(start.host_id)  # the market changed the host's usage
            else:
                start = _place(index, fn, barred)
            if start is not None:
                result.start.append(start)
                continue
            # It fits some host in principle, just not now: the calls wait, and idle
            # containers of other functions make room for the queued ones.
            if n < fn.queued and fn.id not in result.waiting:
                result.waiting[fn.id] = (
                    "every live host that can run this function is busy; the calls start "
                    "as soon as running work frees room"
                )
            if policy.evict_idle and n < fn.queued and not _fits_any_now(fn, hosts):
                made_room = False
                for _ in range(min(missing, fn.queued) - n):
                    stops_before = len(result.stop)
                    if not _make_room(fn, hosts, idle, result.stop):
                        break
                    made_room = True
                    if len(result.stop) > stops_before:
                        result.made_room.add(fn.id)
                if made_room:
                    result.waiting[fn.id] = (
                        "every live host that can run this function is busy; idle containers "
                        "of other functions are being stopped to make room"
                    )
            break
    return result


def _fits_any_now(fn: FunctionDemand, hosts: list[HostCapacity]) -> bool:
    """Whether some live host has the room now (a placer that still refused did so for a
    reason other than room, which stopping containers would not fix)."""
    return any(may_run(h, fn) and _fits(h, fn, ch, now=True) for h in hosts for ch in _choices(fn))
