"""Placement policies side by side: the figures of several seeds folded per policy, the
change against the baseline, and the policies ranked on each figure (pure; no I/O).

Figures per policy (the mean over seeds; lowest and highest seed beside the headline ones):
GPU allocation over the run (the exact time average over one horizon for every run, the
longest run's: a replay that drains earlier counts 0 after its end, so a policy is not
flattered by finishing its last task sooner), the GPU-hours allocated, the allocation when
the arrived demand first equals the fleet's GPUs (FGD's comparison point), FGD's
fragmentation sampled during the run, the share of tasks that started and that gave up (of
the tasks that could run at all), the waits of every task with the censored waits of those
that gave up or still wait, and the impossible tasks (the same for every policy: they depend
on the fleet only).

The ranking is per workload, on each figure separately; no single score is made up of them,
so a policy that wins on allocation and loses on waits shows both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crucible.sim.engine import SimResult

__all__ = ["RANKED", "fold_placement", "rank_placement", "versus_placement"]

RANKED: tuple[tuple[str, str, bool], ...] = (
    ("gpu_allocation_mean", "GPU allocation (time average)", True),
    ("gpu_allocation_when_arrived_equals_capacity", "GPU allocation when demand = GPUs", True),
    ("started_share", "tasks started", True),
    ("wait_all_mean_s", "mean wait, censored waits included", False),
    ("fragmented_gpus_mean", "fragmented GPUs (mean over the run)", False),
)
"""(figure, what it is, higher is better) for each figure the policies are ranked on."""

_SERIES = ("gpu_allocation", "fragmented_gpus", "queued", "wait_with_gave_up_s")


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def _spread(xs: Sequence[float | None]) -> dict[str, float | None]:
    vals = [x for x in xs if x is not None]
    return {
        "mean": _mean(vals),
        "min": round(min(vals), 4) if vals else None,
        "max": round(max(vals), 4) if vals else None,
    }


def _gpu_hours(r: SimResult) -> float:
    s = r.summary
    return float(s["gpu_utilisation_mean"] * s["simulated_hours"] * s["fleet"]["gpus"])


def fold_placement(results: list[SimResult], horizon_hours: float) -> dict[str, Any]:
    """One policy's figures over its seeds (see the module docstring); allocation is
    averaged over ``horizon_hours`` for every run."""
    ps = [r.summary["placement"] for r in results]
    waits = [r.summary["waits"] for r in results]

    def share(p: dict[str, Any], key: str) -> float | None:
        could = p["arrived"] - p["impossible"]["count"]
        return p[key] / could if could else None

    impossible: dict[str, int] = {}
    for p in ps[:1]:  # a function of the fleet: the same in every run of one scenario
        impossible = dict(p["impossible"]["by_reason"])
    n = len(results)
    return {
        "gpu_allocation_mean": _spread(
            [
                _gpu_hours(r) / (horizon_hours * r.summary["fleet"]["gpus"])
                if horizon_hours
                else None
                for r in results
            ]
        ),
        "gpu_hours_allocated": _spread([_gpu_hours(r) for r in results]),
        "gpu_allocation_when_arrived_equals_capacity": _spread(
            [p["gpu_allocation_when_arrived_equals_capacity"] for p in ps]
        ),
        "peak_gpu_allocation": _spread([p["peak_gpu_allocation"] for p in ps]),
        "gpu_allocation_at_end": _spread([p["gpu_allocation_at_end"] for p in ps]),
        "fragmented_gpus_mean": _spread([p["fragmented_gpus_mean"] for p in ps]),
        "fragmented_gpus_at_end": _spread([p["fragmented_gpus_at_end"] for p in ps]),
        "fragmentation_of_free_mean": _spread([p["fragmentation_of_free_mean"] for p in ps]),
        "started_share": _spread([share(p, "started") for p in ps]),
        "gave_up_share": _spread([share(p, "gave_up") for p in ps]),
        "wait_all_mean_s": _spread([w["all"]["mean_s"] for w in waits]),
        "wait_all_p99_s": _spread([w["all"]["p99_s"] for w in waits]),
        "wait_started_mean_s": _spread([w["started"]["mean_s"] for w in waits]),
        "tasks_per_run": round(sum(p["arrived"] for p in ps) / n, 1),
        "gave_up_per_run": round(sum(p["gave_up"] for p in ps) / n, 1),
        "gangs_started_per_run": round(sum(p["gangs_started"] for p in ps) / n, 1),
        "impossible_per_run": round(sum(p["impossible"]["count"] for p in ps) / n, 1),
        "impossible_by_reason": impossible,
        "series": _mean_series([r.series for r in results]),
    }


def _mean_series(all_series: list[dict[str, list[float | None]]]) -> dict[str, list[float | None]]:
    """Each sampled series, the mean over seeds window by window (runs of one scenario
    share their sample times up to the shortest run)."""
    t = min((s["t_hours"] for s in all_series), key=len)
    out: dict[str, list[float | None]] = {"t_hours": list(t)}
    for k in _SERIES:
        out[k] = [_mean([s[k][i] for s in all_series if k in s]) for i in range(len(t))]
    return out


def versus_placement(p: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What a policy changes against the baseline, in points or seconds."""

    def diff(key: str, digits: int = 4) -> float | None:
        a, b = p[key]["mean"], base[key]["mean"]
        return None if a is None or b is None else round(a - b, digits)

    return {
        "gpu_allocation_mean": diff("gpu_allocation_mean"),
        "gpu_allocation_when_arrived_equals_capacity": diff(
            "gpu_allocation_when_arrived_equals_capacity"
        ),
        "started_share": diff("started_share"),
        "wait_all_mean_s": diff("wait_all_mean_s", 1),
        "fragmented_gpus_mean": diff("fragmented_gpus_mean", 1),
    }


def rank_placement(figures: dict[str, dict[str, Any]]) -> dict[str, list[list[str]]]:
    """For each figure of :data:`RANKED`, the policies best first, in tiers: policies with
    equal figures share a tier (in the order given); policies without the figure go last."""
    out: dict[str, list[list[str]]] = {}
    for key, _, higher in RANKED:
        have = [(p, f[key]["mean"]) for p, f in figures.items()]
        known = sorted(
            ((p, v) for p, v in have if v is not None), key=lambda pv: -pv[1] if higher else pv[1]
        )
        tiers: list[list[str]] = []
        last: float | None = None
        for p, v in known:
            if tiers and v == last:
                tiers[-1].append(p)
            else:
                tiers.append([p])
            last = v
        missing = [p for p, v in have if v is None]
        out[key] = tiers + ([missing] if missing else [])
    return out
