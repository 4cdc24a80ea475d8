"""The console's pure parts: SVG charts (escaped, proportional), money and time formats,
and parsing of prices typed into forms."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from crucible.errors import InvalidRequestError
from crucible.server.console import charts
from crucible.server.console.format import dollars, duration, usd
from crucible.server.console.pages.hosts import usd_to_micros


def test_bars_scale_to_the_largest_and_escape_labels() -> None:
    svg = str(charts.bars("<b>t</b>", [("<i>a</i>", 10), ("b", 20), ("c", 0)], usd))
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([0-9.]+)"', svg)]
    assert heights[1] == pytest.approx(2 * heights[0]) and heights[2] == 0
    assert "<i>" not in svg and "<b>" not in svg and "&lt;i&gt;a&lt;/i&gt;" in svg
    assert "$0.00002" in svg  # the top of the axis, formatted by the label function


def test_steps_and_empty_charts() -> None:
    assert "Nothing to chart" in str(charts.steps("p", [], usd))
    one = str(charts.steps("p", [(5, 1_000_000)], usd))
    assert one.count("<circle") == 1
    two = str(charts.steps("p", [(20, 2_000_000), (10, 1_000_000)], usd))
    assert re.search(r'd="M[0-9.]+ [0-9.]+ H[0-9.]+ V[0-9.]+"', two)  # sorted by time


def test_timeline_bar_splits_by_time() -> None:
    phases = [SimpleNamespace(phase="queued", ms=25), SimpleNamespace(phase="running", ms=75)]
    svg = str(charts.timeline_bar(phases))
    widths = [float(w) for w in re.findall(r'width="([0-9.]+)"', svg)]
    assert widths == [pytest.approx(160.0), pytest.approx(480.0)]
    assert str(charts.timeline_bar([])) == ""


def test_formats() -> None:
    assert dollars(2_500_000) == "2.5" and dollars(123) == "0.000123" and dollars(0) == "0"
    assert usd(None) == "-" and usd(1_500_000) == "$1.50"
    assert duration(0.4) == "0.4 ms" and duration(1500) == "1.5 s" and duration(None) == "-"


@pytest.mark.parametrize(
    ("text", "micros"), [("2.5", 2_500_000), ("$0.40", 400_000), ("1000", 10**9), ("0", 0)]
)
def test_prices_parse(text: str, micros: int) -> None:
    assert usd_to_micros(text, "on demand") == micros


@pytest.mark.parametrize(
    "text", ["", "abc", "-1", "NaN", "inf", "0.0000001", "1e400", "1e999999999", "1001"]
)
def test_bad_prices_say_why(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="on demand"):
        usd_to_micros(text, "on demand")


@pytest.mark.parametrize("text", ["2,10", "0,90", "1,000", "$1,5"])
def test_a_comma_in_a_price_is_never_guessed(text: str) -> None:
    """ "2,10" was saved as $210 (the comma dropped as a thousands separator), where much of
    the world writes 2.10 so."""
    with pytest.raises(InvalidRequestError, match="has a comma"):
        usd_to_micros(text, "on demand")


def test_an_event_keeps_every_line_end_inside_its_data() -> None:
    """A call's error message with bare CRs (a stranger's input) ended the live table's
    event early and added fields of its own (`event: end` closed the browser's stream)."""
    from crucible.server.console.live import event

    sent = event("<td>AAA\r\rdata: x\revent: end\rid: 42\r\nB\nC</td>", "html", 7)
    lines = sent.split("\n")
    assert "\r" not in sent
    assert lines[:2] == ["id: 7", "event: html"]
    assert all(line.startswith("data: ") for line in lines[2:-2]), lines
    assert lines[-2:] == ["", ""]  # one blank line ends the one event
