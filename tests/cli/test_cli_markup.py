"""Strings others chose (a host's GPU model, names) reach a renter's terminal as text: a table's
title is never read as Rich markup (a host's model name once printed as a styled, clickable
link in `crucible market`)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from crucible.cli import _output


def test_a_table_title_is_printed_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(
        _output,
        "console",
        Console(file=out, force_terminal=True, width=100, color_system="truecolor"),
    )
    hostile = "[bold red]RICH[/] [link=http://evil.example]CLICK[/link]\x1b[2J"
    _output.table(f"{hostile} book", ["ask"], [["$1.00"]])
    _output.console.print(f"[bold]{_output.shown(hostile)}[/]: 1 free")
    text = out.getvalue()
    assert "\x1b]8;" not in text and "\x1b[2J" not in text  # no hyperlink, no clear-screen
    plain = re.sub(r"\x1b\[[0-9;]*m|\s", "", text)  # styles and wrapping aside
    assert plain.count("[link=http://evil.example]CLICK[/link]") == 2
