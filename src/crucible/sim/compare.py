"""Several policies over several seeds of one scenario, side by side.

A placement scenario's runs are folded by :mod:`crucible.sim.compare_placement` (allocation,
fragmentation, waits, impossible tasks, and the policies ranked on each figure); a market
scenario's as follows.

:func:`compare` runs every (policy, seed) pair through :func:`crucible.sim.engine.run` and
folds the runs of each policy into one set of figures (the mean over seeds, with the lowest
and highest seed beside the headline ones): per tier, the price paid against the on-demand
list price (mean and distribution), hosts' income per GPU-hour against their ask, jobs that
gave up and why, preemptions per GPU-hour, the share of jobs that finished, kWh and gCO2 per
GPU-hour; GPU utilisation over time; and, against the baseline policy (the first one given),
what each other policy changes in price paid, waits and emissions. The two goals of the
market report are judged on these figures (:data:`GOALS`); utilisation on the second half
of the run (a run starts from an empty market, which takes a day or more to fill).

Pure: no I/O (the report module writes files).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from crucible.sim.compare_placement import fold_placement, rank_placement, versus_placement
from crucible.sim.engine import SimResult, run
from crucible.sim.scenario import MAX_FLEET_GPUS, Scenario, ScenarioError, check_policy

__all__ = ["GOALS", "compare"]

GOALS = {
    "discount": "renters pay >= 60% below the on-demand list price at >= 90% GPU utilisation",
    "carbon": "carbon-aware placement cuts gCO2 per GPU-hour by >= 30% for <= 5% more cost",
}
_DISCOUNT_MAX_PAID = 0.40  # paid / list
_UTILISATION_MIN = 0.90
_CARBON_CUT_MIN = 0.30
_COST_RISE_MAX = 0.05

Runner = Callable[[Scenario, int, str], SimResult]


def _run(s: Scenario, seed: int, policy: str) -> SimResult:
    return run(s, seed=seed, policy=policy)


def compare(
    s: Scenario,
    policies: Sequence[str],
    seeds: Sequence[int],
    *,
    gpus: int | None = None,
    runner: Runner = _run,
) -> dict[str, Any]:
    """Run ``policies`` x ``seeds`` on ``s`` (rescaled to ``gpus`` when given) and compare
    them. The first policy is the baseline the others are measured against."""
    if not policies:
        raise ScenarioError("name at least one --policy (e.g. cost-first)")
    if len(set(policies)) != len(policies):
        raise ScenarioError(f"each --policy once: {list(policies)}")
    if not seeds:
        raise ScenarioError("--seeds must be at least 1")
    for p in policies:
        check_policy(s, p)
    if gpus is not None:
        if not 0 < gpus <= MAX_FLEET_GPUS:
            raise ScenarioError(f"--gpus must be within 1..{MAX_FLEET_GPUS:,}, not {gpus:,}")
        if s.kind == "placement" and all(p.source != "generated" for p in s.providers):
            raise ScenarioError(
                f"{s.source}: --gpus rescales generated providers; this fleet has none "
                "(an openb or nodes provider takes `gpus` in the scenario file)"
            )
        s = dataclasses.replace(s, gpus=gpus)
    runs: dict[str, list[SimResult]] = {p: [runner(s, seed, p) for seed in seeds] for p in policies}
    if s.kind == "placement":
        return _compare_placement(s, runs, list(seeds))
    figures = {p: _fold(rs) for p, rs in runs.items()}
    base = policies[0]
    versus = {p: _versus(figures[p], figures[base]) for p in policies[1:]}
    first = runs[base][0].summary
    return {
        "scenario": s.name,
        "kind": s.kind,
        "gpus": first["fleet"]["gpus"],
        "simulated_hours": first["simulated_hours"],
        "seeds": list(seeds),
        "baseline": base,
        "policies": figures,
        "versus_baseline": versus,
        "goals": _goals(figures, versus),
        "runs": {p: [r.summary for r in rs] for p, rs in runs.items()},
    }


def _compare_placement(
    s: Scenario, runs: dict[str, list[SimResult]], seeds: list[int]
) -> dict[str, Any]:
    horizon = max(r.summary["simulated_hours"] for rs in runs.values() for r in rs)
    figures = {p: fold_placement(rs, horizon) for p, rs in runs.items()}
    base = next(iter(runs))
    first = runs[base][0].summary
    return {
        "scenario": s.name,
        "kind": s.kind,
        "gpus": first["fleet"]["gpus"],
        "simulated_hours": horizon,
        "seeds": seeds,
        "baseline": base,
        "policies": figures,
        "versus_baseline": {p: versus_placement(figures[p], figures[base]) for p in list(runs)[1:]},
        "ranking": rank_placement(figures),
        "waits_censoring": first["waits"]["censoring"],
        "runs": {p: [r.summary for r in rs] for p, rs in runs.items()},
    }


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


def _fold(results: list[SimResult]) -> dict[str, Any]:
    """One policy's figures: the mean over its seeds (min and max for the headline ones)."""
    markets = [r.summary["market"] for r in results]
    total_h = [m["gpu_hours"] for m in markets]
    cost = [sum(t["cost_usd"] for t in m["renters"].values()) for m in markets]
    listed = [
        sum((t["list_usd_per_gpu_hour"] or 0) * t["gpu_hours"] for t in m["tiers"].values())
        for m in markets
    ]
    tiers: dict[str, Any] = {}
    for tier in sorted({t for m in markets for t in m["tiers"]}):
        rows = [m["tiers"].get(tier) for m in markets]
        present = [r for r in rows if r is not None]

        def field(*path: str, rows: list[dict[str, Any]] = present) -> float | None:
            vals = []
            for r in rows:
                v: Any = r
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                vals.append(v)
            return _mean(vals)

        gave_up = sum(r["jobs"]["gave_up"] for r in present)
        arrived = sum(r["jobs"]["arrived"] for r in present)
        tiers[tier] = {
            "paid_vs_list": {k: field("paid_vs_list", k) for k in ("mean", "p10", "p50", "p90")},
            "usd_per_gpu_hour": field("usd_per_gpu_hour"),
            "list_usd_per_gpu_hour": field("list_usd_per_gpu_hour"),
            "host_income_usd_per_gpu_hour": field("host_income_usd_per_gpu_hour"),
            "host_ask_usd_per_gpu_hour": field("host_ask_usd_per_gpu_hour"),
            "finished_share": field("finished_share"),
            "gave_up_share": round(gave_up / arrived, 4) if arrived else None,
            "preemptions_per_gpu_hour": field("preemptions_per_gpu_hour"),
            "kwh_per_gpu_hour": field("kwh_per_gpu_hour"),
            "carbon_g_per_gpu_hour": field("carbon_g_per_gpu_hour"),
            "gpu_hours": field("gpu_hours"),
        }
    reasons: Counter[str] = Counter()
    for m in markets:
        reasons.update(m.get("gave_up_by_reason", {}))
    n = len(results)
    series = _mean_series([r.series for r in results])
    preemptions = [
        m["jobs"]["preemptions"] / h if h else None for m, h in zip(markets, total_h, strict=True)
    ]
    return {
        "utilisation": _spread([r.summary["gpu_utilisation_mean"] for r in results]),
        # The run starts from an empty market: the second half is the steady state.
        "utilisation_second_half": _spread(
            [_second_half(r.series["utilisation"]) for r in results]
        ),
        "paid_vs_list": _spread(
            [c / lst if lst else None for c, lst in zip(cost, listed, strict=True)]
        ),
        "usd_per_gpu_hour": _spread(
            [c / h if h else None for c, h in zip(cost, total_h, strict=True)]
        ),
        "carbon_g_per_gpu_hour": _spread([m["carbon_g_per_gpu_hour"] for m in markets]),
        "kwh_per_gpu_hour": _spread(
            [
                sum(
                    t["kwh_per_gpu_hour"] * t["gpu_hours"]
                    for t in m["tiers"].values()
                    if t["kwh_per_gpu_hour"] is not None
                )
                / m["gpu_hours"]
                if m["gpu_hours"]
                else None
                for m in markets
            ]
        ),
        "wait_mean_s": _spread([r.summary["queueing_delay"]["mean_s"] for r in results]),
        "wait_p99_s": _spread([r.summary["queueing_delay"]["p99_s"] for r in results]),
        "preemptions_per_gpu_hour": _spread(preemptions),
        "jobs_gave_up_per_run": round(sum(m["jobs"]["gave_up"] for m in markets) / n, 1),
        "gave_up_by_reason_per_run": {k: round(v / n, 1) for k, v in sorted(reasons.items())},
        "tiers": tiers,
        "utilisation_series": series,
    }


def _second_half(values: Sequence[float | None]) -> float | None:
    return _mean(list(values[len(values) // 2 :]))


def _mean_series(all_series: list[dict[str, list[float | None]]]) -> dict[str, list[float | None]]:
    """Utilisation over time, the mean over seeds window by window."""
    t = all_series[0]["t_hours"]
    util = [
        _mean([s["utilisation"][i] for s in all_series if i < len(s["utilisation"])])
        for i in range(len(t))
    ]
    return {"t_hours": list(t), "utilisation": util}


def _rel(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return round(new / old - 1, 4)


def _versus(p: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What a policy changes against the baseline: relative change of price paid per
    GPU-hour, emissions per GPU-hour, and the mean wait (absolute seconds too)."""
    return {
        "price_change": _rel(p["usd_per_gpu_hour"]["mean"], base["usd_per_gpu_hour"]["mean"]),
        "carbon_change": _rel(
            p["carbon_g_per_gpu_hour"]["mean"], base["carbon_g_per_gpu_hour"]["mean"]
        ),
        "wait_mean_change_s": None
        if p["wait_mean_s"]["mean"] is None or base["wait_mean_s"]["mean"] is None
        else round(p["wait_mean_s"]["mean"] - base["wait_mean_s"]["mean"], 1),
        "gave_up_change": round(p["jobs_gave_up_per_run"] - base["jobs_gave_up_per_run"], 1),
        "utilisation_change": None
        if p["utilisation"]["mean"] is None or base["utilisation"]["mean"] is None
        else round(p["utilisation"]["mean"] - base["utilisation"]["mean"], 4),
    }


def _goals(figures: dict[str, Any], versus: dict[str, Any]) -> dict[str, Any]:
    """Each goal judged per policy, with the margin it was met or missed by."""
    discount = {}
    for p, f in figures.items():
        # Judged on the steady state: the run starts from an empty market.
        paid, util = f["paid_vs_list"]["mean"], f["utilisation_second_half"]["mean"]
        discount[p] = {
            "below_list": None if paid is None else round(1 - paid, 4),
            "utilisation": util,
            "met": paid is not None
            and util is not None
            and paid <= _DISCOUNT_MAX_PAID
            and util >= _UTILISATION_MIN,
            "short_by": {
                "discount": None if paid is None else round(max(0.0, paid - _DISCOUNT_MAX_PAID), 4),
                "utilisation": None
                if util is None
                else round(max(0.0, _UTILISATION_MIN - util), 4),
            },
        }
    carbon = {}
    for p, v in versus.items():
        cut = None if v["carbon_change"] is None else -v["carbon_change"]
        rise = v["price_change"]
        carbon[p] = {
            "carbon_cut": cut,
            "price_rise": rise,
            "met": cut is not None
            and rise is not None
            and cut >= _CARBON_CUT_MIN
            and rise <= _COST_RISE_MAX,
        }
    return {
        "discount": {"goal": GOALS["discount"], "by_policy": discount},
        "carbon": {"goal": GOALS["carbon"], "by_policy": carbon},
    }
