"""Printing for commands: a Rich table for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "console",
    "err_console",
    "fmt_co2",
    "fmt_kwh",
    "fmt_ms",
    "fmt_time",
    "fmt_usd",
    "print_json",
    "table",
]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    console.print(t)


def fmt_usd(micros: int | None) -> str:
    if micros is None:
        return "-"
    return f"${micros / 1_000_000:,.6f}"


def fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:,.3f} s"


def fmt_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_kwh(mwh: int | None) -> str:
    """Milliwatt-hours as kWh (6 decimals: one mWh)."""
    if mwh is None:
        return "-"
    return f"{mwh / 1_000_000:,.6f} kWh"


def fmt_co2(mg: int | None) -> str:
    """Milligrams of CO2 as grams."""
    if mg is None:
        return "-"
    return f"{mg / 1000:,.3f} gCO2"
