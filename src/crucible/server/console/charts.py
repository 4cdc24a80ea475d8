"""Charts as inline SVG, drawn on the server (no chart library, no script, nothing for the
Content-Security-Policy to allow). Pure: data in, escaped markup out.

``bars`` draws one bar per bucket (cost per hour, earnings per day); ``steps`` draws a price
over time (clearing prices). Both scale to the width of the page (a viewBox) and carry a
``<title>`` per mark, so a pointer or a screen reader gets the exact figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup, escape

__all__ = ["bars", "steps", "timeline_bar"]

W, H = 640, 180  # the viewBox; the CSS stretches it to the container's width
PAD_L, PAD_R, PAD_T, PAD_B = 64, 8, 10, 24


def _frame(title: str, body: list[str], top_label: str) -> Markup:
    axis = (
        f'<line class="axis" x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}"/>'
        f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}"/>'
        f'<text class="tick" x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">'
        f"{escape(top_label)}</text>"
        f'<text class="tick" x="{PAD_L - 4}" y="{H - PAD_B}" text-anchor="end">0</text>'
    )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}"'
        f"><title>{escape(title)}</title>{axis}{''.join(body)}</svg>"
    )


def bars(
    title: str,
    points: Sequence[tuple[str, int]],
    label: Callable[[int], str],
    *,
    first: str = "",
    last: str = "",
) -> Markup:
    """One bar per ``(bucket label, value)``, oldest first. ``label`` formats a value (the
    top of the axis and each bar's title); ``first``/``last`` name the ends of the x axis."""
    if not points:
        return Markup('<p class="empty">Nothing to chart yet.</p>')
    top = max(max(v for _, v in points), 1)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = plot_w / len(points)
    body = []
    for i, (name, value) in enumerate(points):
        h = max(0.0, plot_h * value / top)
        x = PAD_L + i * step + step * 0.1
        body.append(
            f'<rect class="bar" x="{x:.1f}" y="{H - PAD_B - h:.1f}" width="{step * 0.8:.1f}"'
            f' height="{h:.1f}"><title>{escape(name)}: {escape(label(value))}</title></rect>'
        )
    body.append(
        f'<text class="tick" x="{PAD_L}" y="{H - 6}">{escape(first)}</text>'
        f'<text class="tick" x="{W - PAD_R}" y="{H - 6}" text-anchor="end">{escape(last)}</text>'
    )
    return _frame(title, body, label(top))


def steps(
    title: str,
    points: Sequence[tuple[int, int]],
    label: Callable[[int], str],
    *,
    first: str = "",
    last: str = "",
) -> Markup:
    """A value over time as a step line through ``(at_ms, value)`` points (any order)."""
    if not points:
        return Markup('<p class="empty">Nothing to chart yet.</p>')
    pts = sorted(points)
    t0, t1 = pts[0][0], pts[-1][0]
    span = max(t1 - t0, 1)
    top = max(max(v for _, v in pts), 1)
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def xy(t: int, v: int) -> tuple[float, float]:
        x = PAD_L + (plot_w * (t - t0) / span if len(pts) > 1 else plot_w / 2)
        return x, H - PAD_B - plot_h * v / top

    path: list[str] = []
    marks = []
    for i, (t, v) in enumerate(pts):
        x, y = xy(t, v)
        path.append(f"H{x:.1f} V{y:.1f}" if i else f"M{x:.1f} {y:.1f}")
        marks.append(
            f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3"><title>'
            f"{escape(label(v))}</title></circle>"
        )
    body = [f'<path class="line" d="{" ".join(path)}"/>', *marks]
    body.append(
        f'<text class="tick" x="{PAD_L}" y="{H - 6}">{escape(first)}</text>'
        f'<text class="tick" x="{W - PAD_R}" y="{H - 6}" text-anchor="end">{escape(last)}</text>'
    )
    return _frame(title, body, label(top))


def timeline_bar(phases: Sequence[Any]) -> Markup:
    """A call's phases (``phase``, ``ms``) as one bar split in proportion to their time."""
    total = sum(max(0, p.ms) for p in phases)
    if not phases or total <= 0:
        return Markup("")
    width, x, parts = 640.0, 0.0, []
    for p in phases:
        w = width * max(0, p.ms) / total
        parts.append(
            f'<rect class="phase {escape(p.phase)}" x="{x:.1f}" y="0" width="{w:.1f}"'
            f' height="28"><title>{escape(p.phase)}: {p.ms} ms</title></rect>'
        )
        x += w
    return Markup(
        f'<svg class="timeline" viewBox="0 0 {width:.0f} 28" role="img" preserveAspectRatio="none"'
        f' aria-label="time spent per phase">{"".join(parts)}</svg>'
    )
