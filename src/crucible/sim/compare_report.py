"""The side-by-side market report (a placement comparison is written by
:mod:`crucible.sim.compare_placement_report`): terminal rows, ``comparison.json``, PNG plots and a
self-contained ``report.html`` (plots embedded, every scenario-chosen string escaped).

Plots keep honest axes: ratios and shares start at zero, each axis names its unit, and a
dashed line marks each goal's threshold where one applies.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.sim.compare_placement_report import write_placement_compare_report
from crucible.sim.report import load_pyplot, window_steps

__all__ = ["goal_lines", "headline_rows", "versus_rows", "work_rows", "write_compare_report"]


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def headline_rows(c: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Prices: one row per policy over all tiers, then one per (policy, tier)."""
    cols = ["policy", "tier", "paid/list", "p10-p90", "$/GPU-h", "income/ask", "util all/2nd½"]
    rows: list[list[str]] = []
    for p, f in c["policies"].items():
        rows.append(
            [
                p,
                "all",
                _num(f["paid_vs_list"]["mean"]),
                "",
                _num(f["usd_per_gpu_hour"]["mean"]),
                "",
                f"{_pct(f['utilisation']['mean'])}/{_pct(f['utilisation_second_half']['mean'])}",
            ]
        )
        for tier, t in f["tiers"].items():
            pv = t["paid_vs_list"]
            income, ask = t["host_income_usd_per_gpu_hour"], t["host_ask_usd_per_gpu_hour"]
            rows.append(
                [
                    p,
                    _tier(tier),
                    _num(pv["mean"]),
                    f"{_num(pv['p10'], '{:.2f}')}-{_num(pv['p90'], '{:.2f}')}",
                    _num(t["usd_per_gpu_hour"]),
                    _num(income / ask if income is not None and ask else None),
                    "",
                ]
            )
    return cols, rows


def work_rows(c: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Work and carbon: the same rows, with finished shares, preemptions, energy, waits."""
    cols = ["policy", "tier", "finished", "preempt/GPU-h", "kWh/GPU-h", "gCO2/GPU-h", "wait s"]
    rows: list[list[str]] = []
    for p, f in c["policies"].items():
        rows.append(
            [
                p,
                "all",
                "",
                _num(f["preemptions_per_gpu_hour"]["mean"], "{:.4f}"),
                _num(f["kwh_per_gpu_hour"]["mean"]),
                _num(f["carbon_g_per_gpu_hour"]["mean"], "{:.1f}"),
                _num(f["wait_mean_s"]["mean"], "{:.0f}"),
            ]
        )
        for tier, t in f["tiers"].items():
            rows.append(
                [
                    p,
                    _tier(tier),
                    _pct(t["finished_share"]),
                    _num(t["preemptions_per_gpu_hour"], "{:.4f}"),
                    _num(t["kwh_per_gpu_hour"]),
                    _num(t["carbon_g_per_gpu_hour"], "{:.1f}"),
                    "",
                ]
            )
    return cols, rows


def _tier(tier: str) -> str:
    return {"on_demand": "on-dem", "interruptible": "interr"}.get(tier, tier)


def versus_rows(c: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = ["policy", "$/GPU-h", "gCO2/GPU-h", "mean wait", "gave up/run"]
    rows = [
        [
            p,
            _pct(v["price_change"], signed=True),
            _pct(v["carbon_change"], signed=True),
            "-" if v["wait_mean_change_s"] is None else f"{v['wait_mean_change_s']:+.0f} s",
            f"{v['gave_up_change']:+.1f}",
        ]
        for p, v in c["versus_baseline"].items()
    ]
    return cols, rows


def goal_lines(c: Mapping[str, Any]) -> list[str]:
    g = c["goals"]
    out = [f"Goal: {g['discount']['goal']}"]
    for p, d in g["discount"]["by_policy"].items():
        verdict = (
            "met"
            if d["met"]
            else (
                f"missed by {_pct(d['short_by']['discount'])} of list in price and "
                f"{_pct(d['short_by']['utilisation'])} in utilisation"
            )
        )
        out.append(
            f"  {p}: {_pct(d['below_list'])} below list at {_pct(d['utilisation'])} "
            f"utilisation (second half of the run): {verdict}"
        )
    out.append(f"Goal: {g['carbon']['goal']}")
    for p, d in g["carbon"]["by_policy"].items():
        out.append(
            f"  {p}: gCO2/GPU-h {_pct(None if d['carbon_cut'] is None else -d['carbon_cut'], True)}"
            f", price {_pct(d['price_rise'], True)}: {'met' if d['met'] else 'missed'}"
        )
    return out


def _plots(c: Mapping[str, Any], out: Path) -> list[Path]:
    plt = load_pyplot()
    policies = list(c["policies"])
    sub = f"{c['scenario']}, {c['gpus']:,} GPUs, {len(c['seeds'])} seed(s)"
    written: list[Path] = []

    # 1. utilisation over time, one line per policy (mean over seeds)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for p in policies:
        s = c["policies"][p]["utilisation_series"]
        xs, ys = window_steps(s["t_hours"], s["utilisation"])  # window means: flat per window
        ax.plot(xs, [y * 100 for y in ys], linewidth=1.2, label=p)
    ax.axhline(90, color="grey", linestyle="--", linewidth=0.8, label="goal: 90%")
    ax.set_ylim(0, 100)
    ax.set_ylabel("GPUs in use (%)")
    ax.set_xlabel("simulated time (hours)")
    ax.set_title(f"GPU utilisation over time: {sub}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, plt, out / "compare_utilisation.png"))

    # 2. price paid against the on-demand list price, per tier and policy: mean and p10-p90
    tiers = sorted({t for f in c["policies"].values() for t in f["tiers"]})
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / max(1, len(policies))
    for i, p in enumerate(policies):
        xs, means, lo, hi = [], [], [], []
        for j, tier in enumerate(tiers):
            pv = c["policies"][p]["tiers"].get(tier, {}).get("paid_vs_list", {})
            if pv.get("mean") is None:
                continue
            xs.append(j + (i - (len(policies) - 1) / 2) * width)
            means.append(pv["mean"] * 100)
            lo.append(max(0.0, pv["mean"] * 100 - (pv.get("p10") or pv["mean"]) * 100))
            hi.append(max(0.0, (pv.get("p90") or pv["mean"]) * 100 - pv["mean"] * 100))
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=p)
    ax.axhline(40, color="grey", linestyle="--", linewidth=0.8, label="goal: <= 40% of list")
    ax.set_xticks(range(len(tiers)), [t.replace("_", "-") for t in tiers])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("price paid / on-demand list (%)")
    ax.set_title(f"Price paid vs list (bar: mean; whiskers: p10-p90 of grants): {sub}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, plt, out / "compare_prices.png"))

    # 3. the cost of carbon-aware placement: $/GPU-h and gCO2/GPU-h per policy
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 0.6 * len(policies) + 1.6), sharey=True)
    usd = [c["policies"][p]["usd_per_gpu_hour"]["mean"] or 0 for p in policies]
    co2 = [c["policies"][p]["carbon_g_per_gpu_hour"]["mean"] or 0 for p in policies]
    ys = list(range(len(policies)))
    a1.barh(ys, usd, color="tab:blue")
    a1.set_yticks(ys, policies, fontsize=8)
    a1.invert_yaxis()
    a1.set_xlabel("renters' $ per GPU-hour")
    a1.set_xlim(left=0)
    a1.set_title("price paid", fontsize=9)
    a2.barh(ys, co2, color="tab:green")
    a2.set_xlabel("gCO2 per GPU-hour")
    a2.set_xlim(left=0)
    a2.set_title("emissions", fontsize=9)
    for a in (a1, a2):
        a.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Price and carbon by policy: {sub}", fontsize=10)
    written.append(_save(fig, plt, out / "compare_carbon.png"))

    # 4. hosts' income per GPU-hour against their ask, per tier and policy
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for i, p in enumerate(policies):
        xs, ys = [], []
        for j, tier in enumerate(tiers):
            t = c["policies"][p]["tiers"].get(tier, {})
            inc, ask = t.get("host_income_usd_per_gpu_hour"), t.get("host_ask_usd_per_gpu_hour")
            if inc is None or not ask:
                continue
            xs.append(j + (i - (len(policies) - 1) / 2) * width)
            ys.append(inc / ask * 100)
        ax.bar(xs, ys, width, label=p)
    ax.axhline(100, color="grey", linestyle="--", linewidth=0.8, label="the ask")
    ax.set_xticks(range(len(tiers)), [t.replace("_", "-") for t in tiers])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("host income / host's ask (%)")
    ax.set_title(f"Hosts' income per GPU-hour vs their on-demand ask: {sub}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, plt, out / "compare_income.png"))
    return written


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _html_table(cols: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>\n{body}</table>"


def write_compare_report(
    c: Mapping[str, Any], timing: Mapping[str, Any], out: Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``comparison.json``, the PNGs (with ``plots``) and ``report.html`` into
    ``out`` (a placement comparison: :mod:`crucible.sim.compare_placement_report`)."""
    if c.get("kind") == "placement":
        return write_placement_compare_report(c, timing, out, plots=plots)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = out / "comparison.json"
    path.write_text(json.dumps({**c, "timing": dict(timing)}, indent=2) + "\n", encoding="utf-8")
    written["json"] = path
    images = _plots(c, out) if plots else []
    for p in images:
        written[p.stem] = p
    cols, rows = headline_rows(c)
    wcols, wrows = work_rows(c)
    vcols, vrows = versus_rows(c)
    reasons = sorted({r for f in c["policies"].values() for r in f["gave_up_by_reason_per_run"]})
    rcols = ["policy", *reasons]
    rrows = [
        [p, *(str(f["gave_up_by_reason_per_run"].get(r, 0)) for r in reasons)]
        for p, f in c["policies"].items()
    ]
    imgs = "\n".join(
        f'<h2>{html.escape(p.stem)}</h2><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    goals = "".join(f"<li>{html.escape(line.strip())}</li>" for line in goal_lines(c))
    name = html.escape(str(c["scenario"]))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crucible sim compare: {name}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;font-size:12px;text-align:left}}
img{{max-width:100%}}</style>
</head><body><h1>crucible sim compare: {name}</h1>
<p>{c["gpus"]:,} GPUs, {c["simulated_hours"]} simulated hours, seeds
{html.escape(", ".join(map(str, c["seeds"])))}; figures are means over the seeds.
Prices paid are against the on-demand list price of the same GPU model.</p>
<h2>Goals</h2><ul>{goals}</ul>
<h2>Prices per policy and tier</h2>{_html_table(cols, rows)}
<h2>Work and carbon per policy and tier</h2>{_html_table(wcols, wrows)}
<h2>Against {html.escape(str(c["baseline"]))}</h2>{_html_table(vcols, vrows)}
<h2>Jobs that gave up, by their last refusal (per run)</h2>{_html_table(rcols, rrows)}
{imgs}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    written["html"] = path
    return written
