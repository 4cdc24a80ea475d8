"""A run's report: rows for the terminal table, ``summary.json``, PNG plots (matplotlib) of
utilisation, GPU allocation and fragmentation, queueing and waits, and prices over time, and
``report.html`` embedding them.

This is the shell side of the simulator: it writes files. matplotlib is imported only when
plots are asked for (it is a dependency of the default install); where it is missing anyway,
:func:`plots_missing` says so and the commands write everything but the plots.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.errors import Error
from crucible.sim.engine import SimResult

__all__ = [
    "draw_series",
    "flatten",
    "load_pyplot",
    "notes",
    "plots_missing",
    "window_steps",
    "write_html",
    "write_json",
    "write_plots",
    "write_report",
]

_NO_MATPLOTLIB = (
    "plots skipped: matplotlib is not installed (the default install includes it: run "
    "./scripts/setup again, or pip install matplotlib); --no-plots silences this"
)


def plots_missing() -> str | None:
    """Why plots cannot be drawn here (matplotlib missing), or ``None`` when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _NO_MATPLOTLIB
    return None


def load_pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend; an :class:`Error` saying how to install
    it when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Error(_NO_MATPLOTLIB) from None
    # Titles and labels hold names others chose (a scenario's, a policy's): text, never
    # TeX (a "$" in "A100 at $2/h vs $3/h" was set as maths, and an unbalanced one such
    # as "$\foo{" stopped the run with a parse error, losing report.html).
    plt.rcParams["text.parse_math"] = False
    plt.rcParams["text.usetex"] = False
    return plt


def notes(summary: Mapping[str, Any]) -> list[str]:
    """What a reader of the table could miss, one line each: trace tasks the run's end cut
    off, and CPU-only tasks that name GPU models (likely a mis-typed ``gpus``)."""
    part = summary.get(summary["kind"], {})
    out: list[str] = []
    cut = part.get("arrived_after_end", 0)
    if cut:
        out.append(
            f"{cut:,} trace tasks arrive after the run's end ({summary['simulated_hours']:g} h, "
            "duration_hours) and were not replayed (placement.arrived_after_end)"
        )
    cpu = part.get("cpu_tasks_naming_models", 0)
    if cpu:
        out.append(
            f"{cpu:,} CPU-only tasks (gpus 0) name GPU models, which apply to GPUs only and "
            "were ignored: check their gpus column (placement.cpu_tasks_naming_models)"
        )
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value)`` rows of a nested summary, in order."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            rows.extend(flatten(v, key + "."))
        elif _records(v):
            rows.append((key, f"{len(v):,} (a table of its own in report.html)"))
        else:
            rows.append((key, "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)))
    return rows


def _records(v: Any) -> bool:
    """Whether ``v`` is a list of records (the impossible tasks listed one by one)."""
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _record_tables(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, list[Any]]]:
    """``(dotted key, records)`` of every list of records in a nested summary."""
    out: list[tuple[str, list[Any]]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.extend(_record_tables(v, f"{prefix}{k}."))
        elif _records(v):
            out.append((f"{prefix}{k}", v))
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _html_records(key: str, records: list[Any]) -> str:
    """One table: a column per field, in the order the records first name them."""
    columns: list[str] = []
    for r in records:
        columns.extend(c for c in r if c not in columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in records
    )
    return f"<h2>{html.escape(key)}</h2>\n<table><tr>{head}</tr>\n{body}</table>"


def write_json(result: SimResult, timing: Mapping[str, Any], path: Path) -> Path:
    data = {"summary": result.summary, "timing": dict(timing), "series": result.series}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


_PLOTS = (
    (
        "utilisation.png",
        "GPU utilisation",
        [("utilisation", "GPUs in use, window mean (share)", True)],
    ),
    (
        "allocation.png",
        "GPU allocation and fragmentation (sampled)",
        [
            ("gpu_allocation", "GPUs allocated (share)", False),
            ("fragmented_gpus", "fragmented GPUs (FGD, GPUs)", False),
            ("fragmentation_of_free", "fragmented / free GPUs (share)", False),
        ],
    ),
    (
        "queueing.png",
        "Queueing",
        [
            ("queue_delay_s", "mean wait of jobs started (s)", True),
            ("wait_with_gave_up_s", "mean wait incl. gave up (s)", True),
            ("queued", "jobs waiting", False),
        ],
    ),
    (
        "prices.png",
        "Clearing prices",
        [
            ("price_on_demand", "on-demand $/GPU-hour", True),
            ("price_interruptible", "interruptible $/GPU-hour", True),
        ],
    ),
)


def draw_series(
    plt: Any,
    t: list[float | None],
    panels: list[tuple[list[float | None], str, bool]],
    title: str,
) -> Any:
    """One figure of stacked panels over the time points ``t``, one per ``(values, label,
    window_mean)``. A window mean (``window_mean`` true: the value at ``t[i]`` is the mean
    over the window ``(t[i-1], t[i]]``, from 0 for the first) is drawn flat over its window,
    as steps; a sampled value (the state at ``t[i]``) as a line through the points. Every
    panel spans the whole run (0 to the last point), whatever points it has; a window
    without a value (``None``) is a break in the line, not a straight line across it, and
    a sampled series with such breaks marks its points (so a lone one between breaks
    shows)."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True)
    axes_list = [axes] if len(panels) == 1 else list(axes)
    for ax, (values, label, window_mean) in zip(axes_list, panels, strict=True):
        if window_mean:
            xs, ys = window_steps(t, values)
            ax.plot(xs, ys, linewidth=1, label=label)
        else:
            xs = [math.nan if x is None else x for x in t]
            ys = [math.nan if y is None else y for y in values]
            gaps = any(y is None for y in values)
            ax.plot(xs, ys, linewidth=1, label=label, marker="." if gaps else None, markersize=3)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    end = max((x for x in t if x is not None), default=0.0)
    # after every panel is drawn: the axes share x, and a limit set from one panel's own
    # points would cut the others off
    axes_list[-1].set_xlim(0, end if end > 0 else None)
    axes_list[0].set_title(title, fontsize=10)
    axes_list[-1].set_xlabel("simulated time (hours)")
    fig.tight_layout()
    return fig


def window_steps(
    t: list[float | None], values: list[float | None]
) -> tuple[list[float], list[float]]:
    """Window means as flat segments: each window's value from its start to its end (NaN,
    a break, for a window without one)."""
    xs: list[float] = []
    ys: list[float] = []
    start = 0.0
    for x, y in zip(t, values, strict=True):
        if x is None:
            continue
        v = math.nan if y is None else y
        xs += [start, x]
        ys += [v, v]
        start = x
    return xs, ys


def write_plots(result: SimResult, out: Path) -> list[Path]:
    """One PNG per plot that has data (prices only for market runs; allocation and
    fragmentation only for placement runs). Every axis starts at zero, and every panel
    spans the whole run."""
    plt = load_pyplot()
    s = result.series
    t = s["t_hours"]
    title = (
        f"{result.summary['scenario']} ({result.summary['policy']}, seed {result.summary['seed']})"
    )
    written: list[Path] = []
    for name, heading, lines in _PLOTS:
        present = [
            (s[k], label, mean)
            for k, label, mean in lines
            if any(v is not None for v in s.get(k, []))
        ]
        if not present:
            continue
        fig = draw_series(plt, t, present, f"{heading}: {title}")
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_html(
    result: SimResult, timing: Mapping[str, Any], images: list[Path], path: Path
) -> Path:
    """A self-contained page: the summary table and the plots (embedded as data URIs)."""
    rows = flatten(result.summary) + flatten(timing, "timing.")
    table = "\n".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    records = "\n".join(_html_records(k, v) for k, v in _record_tables(result.summary))
    imgs = "\n".join(
        f'<h2>{html.escape(p.stem)}</h2><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    name = html.escape(str(result.summary["scenario"]))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crucible sim: {name}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}
td,th{{padding:2px 10px;border-bottom:1px solid #ddd;font-size:13px;text-align:left}}
img{{max-width:100%}}</style>
</head><body><h1>crucible sim: {name}</h1>
<table>{table}</table>
{records}
{imgs}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_report(
    result: SimResult, timing: Mapping[str, Any], out: Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``summary.json``, the PNGs (with ``plots``) and ``report.html`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(result, timing, out / "summary.json")}
    images = write_plots(result, out) if plots else []
    for p in images:
        written[p.stem] = p
    written["html"] = write_html(result, timing, images, out / "report.html")
    return written
