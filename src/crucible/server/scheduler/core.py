"""Scheduler v0: the pure core.

Given a snapshot (functions with their queued work and containers, hosts with their capacity)
and the time, :func:`plan` says which containers to start where, which to stop, and which
functions can never be placed. It does no I/O and reads no clock; the server's loop and the
simulator drive it.

Scaling: the number of containers a function wants comes from :mod:`.autoscaler` (backlog,
arrival rate, start time, ``min_containers``, ``buffer_containers``, ``max_containers``).
Containers above that number that have been idle for the function's scale-down window are
stopped, so a function scales back to zero (or to its ``min_containers``).

Placement (v0): a container's request is a CPU share, memory, and optionally a GPU model and
count in fallback order; the first GPU choice that fits anywhere wins, and among fitting hosts
the tightest fit (fewest free GPUs of that model left, then least free CPU) is taken, which
packs work and keeps large hosts free for large requests.

Tenancy: a host that does not isolate fully (its agent's measured report) runs only its
owner's code, and a function that asks for verified hosts runs only on hosts whose
self-test matched the catalog (:func:`may_run`); when no host may ever run a function for
that reason, it is unschedulable with a reason that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from crucible.server.scheduler.autoscaler import Load, Scale, ScalingPolicy, decide

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
    "may_run",
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
    used_cpu: float = 0.0
    used_memory_mib: int = 0
    used_gpus: set[int] = field(default_factory=set)
    # Tenancy (see may_run): the account that registered the host, whether it isolates
    # fully, whether its self-test verified it. The defaults: open to every account.
    owner: str = ""
    isolated: bool = True
    verified: bool = False

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
    account: str = ""  # the function's account (a host not isolating fully runs its owner's)
    verified: bool = False  # run only on verified hosts


@dataclass(frozen=True)
class Policy:
    unschedulable_grace_ms: int = 10_000
    container_start_timeout_ms: int = 120_000
    # Aim to drain a function's backlog within this time when sizing its container pool.
    target_drain_ms: int = 2_000


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
# None when it cannot now. The server passes the market; the default is _place below.
GpuPlacer = Callable[[FunctionDemand, list[HostCapacity]], StartContainer | None]


@dataclass(frozen=True)
class StopContainer:
    container_id: str
    reason: str  # idle | app_stopped | start_timeout


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


def _fits(host: HostCapacity, fn: FunctionDemand, choice: GpuChoice | None, *, now: bool) -> bool:
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
    isolates fully, and only on verified hosts when the function asks for them."""
    return (host.isolated or host.owner == fn.account) and (host.verified or not fn.verified)


def _place(fn: FunctionDemand, hosts: list[HostCapacity]) -> StartContainer | None:
    for choice in _choices(fn):
        fitting = [h for h in hosts if may_run(h, fn) and _fits(h, fn, choice, now=True)]
        if not fitting:
            continue

        def tightness(
            h: HostCapacity, choice: GpuChoice | None = choice
        ) -> tuple[float, float, str]:
            gpu_left = len(h.free_gpus(choice.model)) - choice.count if choice else 0
            return (gpu_left, h.cpu - h.used_cpu - fn.cpu, h.id)

        host = min(fitting, key=tightness)
        indices: tuple[int, ...] = ()
        if choice is not None:
            indices = tuple(host.free_gpus(choice.model)[: choice.count])
            host.used_gpus.update(indices)
        host.used_cpu += fn.cpu
        host.used_memory_mib += fn.memory_mib
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
    return ", ".join(parts)


def _describe_largest(hosts: list[HostCapacity]) -> str:
    if not hosts:
        return "no host is registered"
    cpu = max(h.cpu for h in hosts)
    mem = max(h.memory_mib for h in hosts)
    models: dict[str, int] = {}
    for h in hosts:
        for _, m in h.gpus:
            models[m] = max(models.get(m, 0), h.total_gpus(m))
    gpus = ", ".join(f"{n}x{m}" for m, n in sorted(models.items())) or "none"
    return f"the largest hosts have {cpu:g} cores, {mem} MiB memory; GPUs per host: {gpus}"


def _never_reason(fn: FunctionDemand, known: list[HostCapacity]) -> str:
    """Why no known host may ever run ``fn``, in words the builder can act on."""
    request = _describe_request(fn)
    sized = [h for h in known if any(_fits(h, fn, ch, now=False) for ch in _choices(fn))]
    if not sized:
        return (
            f"no host can ever run this function ({request}): {_describe_largest(known)}. "
            "Lower the request, add a fallback with gpu=[...], or add a host that has it."
        )
    if not any(h.isolated or h.owner == fn.account for h in sized):
        return (
            f"no fully isolated host can run this function ({request}): the hosts big enough "
            "do not isolate fully (e.g. runtime process), so they run only their owner's "
            "code. Add a fully isolated host (docs/sandbox.md), or run it on a host of your "
            "own account."
        )
    return (
        f"no verified host can run this function ({request}): it asks for verified=True, and "
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
) -> Plan:
    """Decide container starts and stops. ``hosts`` are live hosts with their current usage;
    they are updated in place as containers are placed (pass copies to keep the originals).

    ``known_hosts`` (default: ``hosts``) decide whether a request can *ever* be met: include
    hosts that are briefly lost, so a heartbeat blip of the only big host does not fail the
    calls waiting for it.

    ``gpu_placer`` places containers that need GPUs (the server passes the market, which
    chooses the host by price and may preempt); without it they are placed like the others."""
    known = hosts if known_hosts is None else known_hosts
    result = Plan()
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
            idle = sorted(
                (
                    c
                    for c in live
                    if not c.busy
                    and c.state == "running"
                    and now_ms - c.last_active_ms >= fn.scaledown_window_ms
                ),
                key=lambda c: c.last_active_ms,
            )
            for c in idle[: len(live) - want]:
                result.stop.append(StopContainer(c.id, "idle"))
            continue

        missing = want - len(live)
        if missing <= 0 or now_ms < fn.start_not_before_ms:
            continue
        ever_fits = any(
            may_run(h, fn) and _fits(h, fn, ch, now=False) for h in known for ch in _choices(fn)
        )
        if not ever_fits:
            waited = now_ms - (fn.oldest_queued_ms if fn.oldest_queued_ms is not None else now_ms)
            if fn.queued and waited >= policy.unschedulable_grace_ms:
                result.unschedulable.append(Unschedulable(fn.id, _never_reason(fn, known)))
            continue
        place = gpu_placer if gpu_placer is not None and fn.gpus else _place
        for _ in range(missing):
            start = place(fn, hosts)
            if start is None:
                break  # it fits some host in principle, just not now: the calls wait
            result.start.append(start)
    return result
