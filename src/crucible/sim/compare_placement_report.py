"""The side-by-side placement report: terminal rows, ``comparison.json``, PNG plots and a
self-contained ``report.html`` (plots embedded, every scenario-chosen string escaped).

Plots keep honest axes: shares and counts start at zero, each axis names its unit, every
plot has a title and a legend naming the policies.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.sim.compare_placement import RANKED
from crucible.sim.report import load_pyplot

__all__ = [
    "impossible_lines",
    "placement_rows",
    "ranking_rows",
    "waits_figure",
    "write_placement_compare_report",
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def placement_rows(c: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per policy (means over seeds): GPU allocation (time average, and when the
    arrived demand equals the GPUs), fragmented GPUs (mean over the run), tasks started and
    given up (of those that could run), the mean and p99 wait of every task (censored waits
    included) and the mean wait of the tasks that started."""
    cols = [
        "policy",
        "alloc",
        "alloc@cap",
        "frag GPUs",
        "started",
        "gave up",
        "wait s",
        "p99 s",
        "started s",
    ]
    rows = []
    for p, f in c["policies"].items():
        rows.append(
            [
                p,
                _pct(f["gpu_allocation_mean"]["mean"]),
                _pct(f["gpu_allocation_when_arrived_equals_capacity"]["mean"]),
                "-"
                if f["fragmented_gpus_mean"]["mean"] is None
                else f"{f['fragmented_gpus_mean']['mean']:,.1f}",
                _pct(f["started_share"]["mean"]),
                _pct(f["gave_up_share"]["mean"]),
                _s(f["wait_all_mean_s"]["mean"]),
                _s(f["wait_all_p99_s"]["mean"]),
                _s(f["wait_started_mean_s"]["mean"]),
            ]
        )
    return cols, rows


def ranking_rows(c: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per ranked figure: the policies best first."""
    return ["figure (better: higher/lower)", "policies, best first"], [
        [
            f"{what} ({'higher' if higher else 'lower'})",
            " > ".join(" = ".join(tier) for tier in c["ranking"][key]),
        ]
        for key, what, higher in RANKED
    ]


def impossible_lines(c: Mapping[str, Any]) -> list[str]:
    """The impossible tasks per run, by reason (the same for every policy)."""
    f = next(iter(c["policies"].values()))
    if not f["impossible_per_run"]:
        return ["No task was impossible on this fleet."]
    why = ", ".join(f"{k} {v}" for k, v in f["impossible_by_reason"].items())
    return [
        f"{f['impossible_per_run']:g} tasks per run could never run on this fleet ({why}); "
        "they are not queued and not counted as given up or in the waits."
    ]


def _plots(c: Mapping[str, Any], out: Path) -> list[Path]:
    plt = load_pyplot()
    policies = list(c["policies"])
    sub = f"{c['scenario']}, {c['gpus']:,} GPUs, {len(c['seeds'])} seed(s)"
    written: list[Path] = []

    def over_time(key: str, scale: float, ylabel: str, title: str, name: str) -> None:
        fig, ax = plt.subplots(figsize=(10, 3.4))
        for p in policies:
            s = c["policies"][p]["series"]
            pts = [(t, v) for t, v in zip(s["t_hours"], s[key], strict=True) if v is not None]
            ax.plot([x for x, _ in pts], [y * scale for _, y in pts], linewidth=1.2, label=p)
        ax.set_ylim(bottom=0)
        if key == "gpu_allocation":
            ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("simulated time (hours)")
        ax.set_title(f"{title}: {sub}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="policy")
        written.append(_save(fig, plt, out / name))

    over_time(
        "gpu_allocation",
        100,
        "GPUs allocated (%)",
        "GPU allocation over time (sampled, mean over seeds)",
        "compare_allocation.png",
    )
    over_time(
        "fragmented_gpus",
        1,
        "fragmented GPUs (FGD, GPUs)",
        "Fragmentation over time (sampled, mean over seeds)",
        "compare_fragmentation.png",
    )

    fig = waits_figure(plt, c, f"Waits and give-ups by policy: {sub}")
    written.append(_save(fig, plt, out / "compare_waits.png"))
    return written


def waits_figure(plt: Any, c: Mapping[str, Any], title: str) -> Any:
    """Mean waits (censored included, and of the tasks that started) and the share of tasks
    that gave up, a row per policy. The legend sits below the axes, clear of every bar."""
    policies = list(c["policies"])
    fig, (a1, a2) = plt.subplots(
        1, 2, figsize=(10, 0.5 * len(policies) + 2.2), sharey=True, layout="constrained"
    )
    ys = list(range(len(policies)))
    h = 0.38
    allw = [(c["policies"][p]["wait_all_mean_s"]["mean"] or 0) / 3600 for p in policies]
    started = [(c["policies"][p]["wait_started_mean_s"]["mean"] or 0) / 3600 for p in policies]
    a1.barh([y - h / 2 for y in ys], allw, h, label="every task (censored waits included)")
    a1.barh([y + h / 2 for y in ys], started, h, label="tasks that started only")
    a1.set_yticks(ys, policies, fontsize=8)
    a1.invert_yaxis()
    a1.set_xlim(left=0)
    a1.set_xlabel("mean wait (hours)")
    a1.set_title("waits", fontsize=9)
    gave = [(c["policies"][p]["gave_up_share"]["mean"] or 0) * 100 for p in policies]
    a2.barh(ys, gave, color="tab:red", label="gave up")
    a2.set_xlim(left=0)
    a2.set_xlabel("tasks that gave up (% of those that could run)")
    a2.set_title("gave up", fontsize=9)
    for a in (a1, a2):
        a.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=7, loc="outside lower center", ncol=3)
    fig.suptitle(title, fontsize=10)
    return fig


def _save(fig: Any, plt: Any, path: Path) -> Path:
    if fig.get_layout_engine() is None:  # a figure laid out as it was made keeps its layout
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


def write_placement_compare_report(
    c: Mapping[str, Any], timing: Mapping[str, Any], out: Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``comparison.json``, the PNGs (with ``plots``) and ``report.html``."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = out / "comparison.json"
    path.write_text(json.dumps({**c, "timing": dict(timing)}, indent=2) + "\n", encoding="utf-8")
    written["json"] = path
    images = _plots(c, out) if plots else []
    for p in images:
        written[p.stem] = p
    imgs = "\n".join(
        f'<h2>{html.escape(p.stem)}</h2><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    name = html.escape(str(c["scenario"]))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crucible sim compare: {name}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;font-size:12px;text-align:left}}
img{{max-width:100%}}</style>
</head><body><h1>crucible sim compare: {name}</h1>
<p>{c["gpus"]:,} GPUs, {c["simulated_hours"]} simulated hours, seeds
{html.escape(", ".join(map(str, c["seeds"])))}; figures are means over the seeds. Waits:
{html.escape(str(c["waits_censoring"]))}.</p>
<p>{html.escape(" ".join(impossible_lines(c)))}</p>
<h2>Per policy</h2>{_html_table(*placement_rows(c))}
<h2>Ranking on this workload</h2>{_html_table(*ranking_rows(c))}
{imgs}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    written["html"] = path
    return written
