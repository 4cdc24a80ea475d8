"""Printing for commands: a Rich table for people, ``--json`` for scripts.

Strings that others chose (host names, regions, app and function names, log lines, error
messages from remote code) reach a terminal only through :func:`clean` (control characters
shown as visible escapes) and, where Rich markup is interpreted, :func:`shown` (``[red]``
printed as it is). Table cells go through both on their own."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from crucible.cli._ids import shorten_ids

__all__ = [
    "clean",
    "console",
    "err_console",
    "fmt_clock",
    "fmt_co2",
    "fmt_kwh",
    "fmt_ms",
    "fmt_time",
    "fmt_usd",
    "print_json",
    "shown",
    "table",
]

console = Console()
err_console = Console(stderr=True)


def clean(value: object, *, lines: bool = False) -> str:
    """The text of ``value`` safe to write to a terminal: every character a terminal would
    act on rather than show (C0 and C1 controls such as ESC, BEL, CR and newline, DEL,
    bidirectional overrides and other format characters, line separators) is replaced by a
    visible escape (``\\x1b``, ``\\u202e``). A tab stays a tab, and with ``lines`` a newline
    stays a newline (multi-line text: tracebacks); everything printable is kept as it is
    (no markup is added or removed: see :func:`shown`)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == "\t" or (lines and ch == "\n"):
            out.append(ch)
            continue
        code = ord(ch)
        if code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def shown(value: object, *, lines: bool = False) -> str:
    """:func:`clean`, then escaped for Rich markup: for values placed inside a string given
    to ``console.print``, so that ``[red]`` or ``[link=...]`` in a name prints literally."""
    return escape(clean(value, lines=lines))


def print_json(data: Any) -> None:
    # JSON escapes every control character itself (ensure_ascii): safe as it is.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# A cell this short (an amount, a duration, a count, a short id) never folds while the
# table can fit without folding it; longer text (names, messages) folds within its column.
_COMPACT = 12


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    ids: Collection[str] = (),
) -> None:
    """Print a table that fits the terminal (80 columns and up). Cells are plain text
    (cleaned, never read as markup); ids in them are shown short (cli/_ids.py: the form
    every id argument accepts back; `--json` prints them whole). The columns named in
    ``ids`` never wrap; short values (amounts, durations) keep to one line while the table
    fits, their headers folding onto several lines instead; long text folds."""
    text_rows = [[shorten_ids(clean("" if v is None else v)) for v in row] for row in rows]
    id_cols = {i for i, col in enumerate(columns) if col in ids}
    natural = [
        max([len(r[i]) for r in text_rows if i < len(r)], default=0) for i in range(len(columns))
    ]
    # The longest word of a column: text folds at spaces first, mid-word only past this.
    word = [
        min(_COMPACT, max([len(w) for r in text_rows if i < len(r) for w in r[i].split()] or [0]))
        for i in range(len(columns))
    ]
    compact = {i for i, w in enumerate(natural) if w <= _COMPACT} | id_cols
    # Room for every column at its least (2: the padding and the rule after each).
    # A column kept on one line is as wide as its cells and its header's longest word.
    least = [
        max([natural[i], *(len(w) for w in str(col).replace("_", " ").split())])
        if i in compact
        else word[i]
        for i, col in enumerate(columns)
    ]
    need = sum(w + 2 for w in least)
    fits = need <= console.width
    keep = compact if fits else _kept_whole(compact, id_cols, least, word)
    # Whether the folding columns still have room for their longest word (so text folds at
    # spaces, not mid-word: `2xH1` / `00`).
    words_fit = sum((least[i] if i in keep else word[i]) + 2 for i in range(len(least))) <= (
        console.width
    )
    t = Table(
        title=Text(clean(title)),  # others' words in it (a model, a name): never markup
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for i, col in enumerate(columns):
        header = clean(col)
        if i in keep:
            if len(header) > natural[i]:
                header = header.replace(" ", "\n").replace("_", "_\n")
            t.add_column(header, no_wrap=True, min_width=least[i] if i in compact else natural[i])
        else:
            t.add_column(header, overflow="fold", min_width=word[i] if words_fit else None)
    for r in text_rows:
        t.add_row(*[Text(cell) for cell in r])
    console.print(t)


def _kept_whole(
    compact: set[int], id_cols: set[int], least: list[int], word: list[int]
) -> set[int]:
    """For a table too wide to keep every short value on one line: the id columns, and as
    many short columns as the terminal still has room for (the narrowest first), so that a
    number or a time is not split mid-digit (``0/2410`` / ``5``) while room is left; the
    others fold."""
    keep = set(id_cols)
    room = console.width - sum(
        (least[i] if i in id_cols else word[i]) + 2 for i in range(len(least))
    )
    for i in sorted(compact - id_cols, key=lambda i: least[i] - word[i]):
        extra = least[i] - word[i]
        if extra > room:
            break
        keep.add(i)
        room -= extra
    return keep


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


def fmt_clock(ms: int | None) -> str:
    """The time of day (UTC) to the millisecond: for events of one day, such as a timeline."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def fmt_kwh(mwh: int | None, *, unit: bool = True) -> str:
    """Milliwatt-hours as kWh (6 decimals: one mWh); bare for a column headed "kWh"."""
    if mwh is None:
        return "-"
    return f"{mwh / 1_000_000:,.6f}" + (" kWh" if unit else "")


def fmt_co2(mg: int | None, *, unit: bool = True) -> str:
    """Milligrams of CO2 as grams; bare for a column headed "gCO2"."""
    if mg is None:
        return "-"
    return f"{mg / 1000:,.3f}" + (" gCO2" if unit else "")
