"""The discrete-event loop: a scenario, a seed and a policy in; a :class:`SimResult` out.

The loop pops events in (time, sequence) order from :class:`~crucible.sim.events.EventQueue`
(the virtual clock) and hands them to a driver over the real cores: the placement core for
``kind = "placement"`` (:class:`~crucible.sim.placement_driver.PlacementDriver`), the market
core for ``kind = "market"`` (:class:`~crucible.sim.market_driver.MarketDriver`). Nothing here
reads a clock or draws unseeded randomness, so the same scenario, seed and policy give the
same result. The only I/O is reading the trace, through loaders the caller may replace.

A run ends at ``duration_hours`` or, without one (placement kind), at its last event
(arrival or finish): the last sample window is then shorter than the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crucible.core.market import Market, MarketRules, Prefer
from crucible.core.placement import Cluster, Request, make_policy
from crucible.protocol.gpus import GPU_CATALOG
from crucible.sim.events import Arrive, EventQueue, Finish, NextArrival, Sample
from crucible.sim.feasibility import Feasibility
from crucible.sim.fleet import Host, NodeLoader, add_to_market, build_fleet, openb_dir, to_nodes
from crucible.sim.market_driver import MarketDriver
from crucible.sim.metrics import Recorder
from crucible.sim.placement_driver import GAUGES, PlacementDriver
from crucible.sim.scenario import Scenario, ScenarioError, check_policy
from crucible.sim.trace import TracePod, has_times, load_nodes, load_pods, workload_classes
from crucible.sim.trace_format import TraceTask
from crucible.sim.workload import (
    MS_PER_HOUR,
    ClassSource,
    InflateSource,
    JobSource,
    TaskSource,
    TraceSource,
    load_task_trace,
)

__all__ = [
    "MARKET_POLICIES",
    "MarketPolicy",
    "PodLoader",
    "SimResult",
    "TaskLoader",
    "list_prices",
    "run",
]

PodLoader = Callable[[Path, str], list[TracePod]]
TaskLoader = Callable[[Path, str], tuple[list[TraceTask], dict[str, int]]]


@dataclass(frozen=True)
class SimResult:
    """What a run produced: ``summary`` (nested, JSON-ready) and ``series`` (one list per
    metric, one point per sample window; ``None`` where a window had nothing to measure)."""

    summary: dict[str, Any]
    series: dict[str, list[float | None]]


def _ref_prices(hosts: Sequence[Host]) -> dict[str, int]:
    """Each model's mean on-demand ask: what a class's bid fractions refer to."""
    tot: dict[str, list[int]] = {}
    for h in hosts:
        if h.gpus:
            acc = tot.setdefault(h.model, [0, 0])
            acc[0] += h.price_micros
            acc[1] += 1
    return {m: a[0] // a[1] for m, a in tot.items()}


@dataclass(frozen=True)
class MarketPolicy:
    """How the simulated renters buy (see scenario.MARKET_POLICIES): the preference of
    on-demand and of interruptible work, a price cap as a fraction of the mean ask of the
    job's first model, whether interruptible work pays each host's minimum (its reserve
    price) instead of its bid, and a carbon cap (gCO2/kWh) on interruptible work."""

    on_demand: Prefer = Prefer.CHEAPEST
    interruptible: Prefer = Prefer.CHEAPEST
    price_cap: float | None = None
    pay_reserve: bool = False
    interruptible_max_carbon: int | None = None


# The lower quarter of the grid intensities the market scenario draws (200-600 gCO2/kWh).
GREEN_CAP_G_PER_KWH = 300

# A quiet stretch (nothing running or waiting) longer than this many sample windows is
# sampled as one window; when a run's series reach MAX_SAMPLES points, their windows are
# merged two by two and the window doubles from there, so a trace that spans decades
# neither stalls the loop on samples (they grow with the logarithm of the run's length)
# nor writes a summary.json of millions of points (a 317-year task wrote 93 MB).
IDLE_SKIP_STEPS = 1_000
MAX_SAMPLES = 20_000

MARKET_POLICIES: dict[str, MarketPolicy] = {
    "cost-first": MarketPolicy(),
    "carbon-first": MarketPolicy(Prefer.GREENEST, Prefer.GREENEST),
    "green-interruptible": MarketPolicy(Prefer.CHEAPEST, Prefer.GREENEST),
    "green-capped-interruptible": MarketPolicy(
        Prefer.CHEAPEST, Prefer.GREENEST, interruptible_max_carbon=GREEN_CAP_G_PER_KWH
    ),
    "carbon-capped": MarketPolicy(Prefer.GREENEST, Prefer.GREENEST, price_cap=1.0),
    "reserve-price": MarketPolicy(pay_reserve=True),
}


def list_prices(hosts: Sequence[Host]) -> dict[str, int]:
    """The on-demand list price of each model in the fleet (micro-dollars per GPU-hour): the
    catalog's reference price (a big cloud's on-demand price), else the model's highest ask
    in the fleet."""
    out: dict[str, int] = {}
    for h in hosts:
        if h.gpus:
            out[h.model] = max(out.get(h.model, 0), h.price_micros)
    for model in out:
        if model in GPU_CATALOG:
            out[model] = round(GPU_CATALOG[model].reference_price_usd * 1_000_000)
    return out


def _sample(rec: Recorder, driver: PlacementDriver | MarketDriver, now: int) -> None:
    if isinstance(driver, PlacementDriver):
        rec.sample(now, driver.queued, driver.gauges())
    else:
        rec.sample(now, driver.waiting)


def run(
    s: Scenario,
    *,
    seed: int | None = None,
    policy: str | None = None,
    nodes_loader: NodeLoader = lambda d: load_nodes(d),
    pods_loader: PodLoader = lambda d, name: load_pods(d, name),
    tasks_loader: TaskLoader = load_task_trace,
) -> SimResult:
    """Simulate ``s`` (``seed`` and ``policy`` default to the scenario's)."""
    seed = s.seed if seed is None else seed
    policy = policy or s.policy
    check_policy(s, policy)
    hosts, copies = build_fleet(s, seed, nodes_loader)
    fleet_gpus = sum(h.gpus for h in hosts)
    if fleet_gpus <= 0:
        raise ScenarioError(f"{s.source}: the fleet has no GPUs")
    end_ms = round(s.duration_hours * MS_PER_HOUR) if s.duration_hours > 0 else None
    nodes = to_nodes(hosts)
    # FGD's task classes from a trace (the fgd policy's and the fragmentation figures')
    # leave out the tasks no node could ever run: they never take a GPU, so no free GPU is
    # lost to them
    feasible = Feasibility(nodes)
    sources: list[JobSource] = []
    fgd_classes: tuple[tuple[Request, float], ...] = ()
    skipped: dict[str, int] = {}
    trace_start_ms = 0
    cpu_naming_models = 0
    if s.tasks is not None:
        tasks, skipped = tasks_loader(s.resolve(s.tasks.path), s.tasks.format)
        if not tasks:
            raise ScenarioError(f"{s.source}: workload.path: the trace has no tasks to replay")
        # The run's clock starts at the first arrival, as trace studies measure: a trace
        # stamped in Unix time (most real ones) had decades of empty lead-in that every mean
        # over the run was averaged over (a five-task trace reported 0% utilisation over
        # 472,223 hours).
        cpu_naming_models = sum(1 for t in tasks if not t.request.num_gpu and t.request.models)
        trace_start_ms = min(t.submit_ms for t in tasks)
        if trace_start_ms:
            tasks = [replace(t, submit_ms=t.submit_ms - trace_start_ms) for t in tasks]
        patience = round(s.tasks.patience_hours * MS_PER_HOUR)
        # PAI's instances, independent: a task of n instances is n tasks of one
        independent = s.tasks.format == "pai" and s.tasks.instances == "independent"
        sources.append(TaskSource(tasks, patience, end_ms, independent=independent))
        fgd_classes = workload_classes(
            [
                t.request
                for t in tasks
                if feasible.reason(t.request, 1 if independent else t.nodes) is None
                for _ in range(t.nodes if independent else 1)
            ],
            max_classes=12,
        )
    elif s.trace is not None:
        where = openb_dir(s.trace.trace_dir)
        try:
            pods = pods_loader(where, s.trace.pods)
        except FileNotFoundError:
            raise ScenarioError(
                f"{s.source}: workload: no openb_pod_list_{s.trace.pods}.csv in {where}; "
                "put the trace there or set workload.trace_dir"
            ) from None
        if s.trace.replay == "inflate":
            sources.append(InflateSource(pods, fleet_gpus, s.trace.inflate_to, seed))
        elif pods and not has_times(pods):
            raise ScenarioError(
                f"{s.source}: workload: openb_pod_list_{s.trace.pods}.csv records no creation "
                'or deletion times (the multi-GPU lists do not): replay it with replay = "inflate"'
            )
        else:
            sources.append(TraceSource(pods, copies if s.trace.scale_with_fleet else 1, end_ms))
        fgd_classes = workload_classes(
            [p.request for p in pods if feasible.reason(p.request) is None], max_classes=12
        )
    else:
        if end_ms is None:
            raise ScenarioError(
                f"{s.source}: duration_hours: synthetic classes need a duration > 0"
            )
        ref = _ref_prices(hosts)
        for i, c in enumerate(s.classes):
            unknown = [m for m in c.models if m not in ref]
            if unknown and len(unknown) == len(c.models):
                raise ScenarioError(
                    f"{s.source}: workload.classes[{i}].models: no host in the fleet has "
                    f"{list(c.models)}; the fleet has {sorted(ref)}"
                )
            sources.append(ClassSource(c, fleet_gpus, seed, i, end_ms, ref))
        fgd_classes = tuple(
            (
                Request(
                    c.cpu * 1000, c.memory_gib * 1024, c.gpus[0], c.gpu_milli, frozenset(c.models)
                ),
                c.load,
            )
            for c in s.classes
        )

    q = EventQueue()
    rec = Recorder(float(fleet_gpus), GAUGES if s.kind == "placement" else ())
    driver: PlacementDriver | MarketDriver
    if s.kind == "placement":
        kw: dict[str, Any] = {"workload": fgd_classes} if policy == "fgd" else {}
        cluster = Cluster.from_nodes(nodes, make_policy(policy, **kw))
        driver = PlacementDriver(cluster, rec, q)
        driver.classes = fgd_classes
    else:
        market = Market(MarketRules(grace_ms=round(s.grace_seconds * 1000)))
        add_to_market(market, hosts)
        mp = MARKET_POLICIES[policy]
        driver = MarketDriver(
            market,
            {h.id: h for h in hosts},
            rec,
            q,
            prefer=mp.on_demand,
            prefer_interruptible=mp.interruptible,
            price_cap=mp.price_cap,
            pay_reserve=mp.pay_reserve,
            interruptible_max_carbon=mp.interruptible_max_carbon,
            list_prices=list_prices(hosts),
            ref_prices=_ref_prices(hosts),
            platform_fee=s.platform_fee,
            default_carbon=s.default_carbon_g_per_kwh,
            power_watts=dict(s.power_watts),
            patience_ms={c.name: round(c.patience_hours * MS_PER_HOUR) for c in s.classes},
        )

    for i, src in enumerate(sources):
        t = src.peek()
        if t is not None:
            q.push(t, NextArrival(i))
    step = max(1, round(s.sample_minutes * 60_000))
    q.push(step, Sample())
    next_id = 0
    while len(q):
        at = q.peek_ms()
        if end_ms is not None and at is not None and at > end_ms:
            break
        if end_ms is None and len(q) == 1 and isinstance(q.peek(), Sample):
            break  # no work left: the run ends at its last event, not on the sample grid
        ev = q.pop()
        now = q.now_ms
        if isinstance(ev, NextArrival):
            src = sources[ev.source]
            job = src.pop(next_id)
            next_id += 1
            driver.arrive(job, now)
            t = src.peek()
            if t is not None:
                q.push(t, NextArrival(ev.source))
        elif isinstance(ev, Finish):
            if ev.epoch == ev.job.epoch:
                driver.finish(ev.job, now)
        elif isinstance(ev, Arrive):
            driver.arrive(ev.job, now)
        else:
            driver.expire(now)
            _sample(rec, driver, now)
            if len(rec.series["t_hours"]) >= MAX_SAMPLES:  # a long run: coarser windows
                rec.compact()
                step *= 2
            nxt = q.peek_ms()
            if nxt is not None and (end_ms is None or now + step <= end_ms):
                at_ms = now + step
                if driver.idle and nxt - now > IDLE_SKIP_STEPS * step:
                    # Nothing runs or waits until the next event, far off: one window over
                    # the quiet stretch, ending on the grid just before it, not a sample
                    # per step of it (a trace may start at a Unix timestamp).
                    at_ms = now + (nxt - now) // step * step
                    if end_ms is not None:
                        at_ms = min(at_ms, now + (end_ms - now) // step * step)
                q.push(at_ms, Sample())
    end = end_ms if end_ms is not None else q.now_ms
    driver.expire(end)  # a deadline since the last sample: that job gave up, not waiting
    last = rec.series["t_hours"][-1] if rec.series["t_hours"] else None
    if last is None or last * MS_PER_HOUR < end:
        _sample(rec, driver, end)
    driver.close(end)

    providers: dict[str, dict[str, Any]] = {}
    for h in hosts:
        p = providers.setdefault(h.provider, {"hosts": 0, "gpus": 0, "sites": set()})
        p["hosts"] += 1
        p["gpus"] += h.gpus
        p["sites"].add(h.region)
    summary: dict[str, Any] = {
        "scenario": s.name,
        "kind": s.kind,
        "seed": seed,
        "policy": policy,
        "fleet": {
            "hosts": len(hosts),
            "gpus": fleet_gpus,
            "providers": {
                k: {"hosts": v["hosts"], "gpus": v["gpus"], "sites": len(v["sites"])}
                for k, v in providers.items()
            },
        },
        "simulated_hours": round(end / MS_PER_HOUR, 3),
        "events": q.processed,
        "gpu_utilisation_mean": round(rec.mean_utilisation(end), 4),
        "queueing_delay": rec.delay_summary(),
        "waits": rec.wait_summary(),
    }
    summary[s.kind] = driver.summary()
    if s.tasks is not None or s.trace is not None:
        # a recorded trace cut by duration_hours: the tasks it did not replay
        summary[s.kind]["arrived_after_end"] = sum(src.after_end() for src in sources)
    if s.tasks is not None:
        # `models` applies to GPUs: a CPU-only task naming models is likely a mis-typed `gpus`
        summary[s.kind]["cpu_tasks_naming_models"] = cpu_naming_models
        summary[s.kind]["trace_rows_skipped"] = skipped
        # The trace's time of the run's 0 (its first arrival), in seconds of its own clock.
        summary[s.kind]["trace_start_s"] = trace_start_ms / 1000
    return SimResult(summary, rec.series)
