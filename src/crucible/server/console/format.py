"""How the console writes money, times and rates (Jinja filters). Pure functions."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from crucible.core.ledger import format_usd

__all__ = ["ago", "dollars", "duration", "rate", "usd", "visible", "when"]

# Characters a browser acts on rather than shows in text others chose (a log line, an app's
# error): the bidirectional overrides and isolates that reorder the rest of a line (a file
# shown as "txt.exe" that is "exe.txt"), the invisible marks, and C0/C1 controls but tab and
# newline. The CLI shows the same ones escaped (cli/_output.clean).
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def visible(text: str) -> str:
    """``text`` with each character of :data:`_HIDDEN` written as its escape (``\u202e``)."""
    if text.isprintable():
        return text
    return _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def usd(micros: int | None) -> str:
    return "-" if micros is None else format_usd(int(micros))


def when(ms: int | None) -> str:
    """An epoch-milliseconds time in UTC, to the second."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(ms: int | None, now_ms: int | None = None) -> str:
    if ms is None:
        return "-"
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return duration(max(0, now - ms)) + " ago"


def duration(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    ms = float(ms)
    if ms < 10:
        return f"{ms:.1f} ms" if ms else "0 ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:.0f} s"
    if s < 86400:
        return f"{s // 3600:.0f} h {s % 3600 // 60:.0f} min"
    return f"{s // 86400:.0f} d {s % 86400 // 3600:.0f} h"


def rate(per_s: float | None) -> str:
    if not per_s:
        return "0/s"
    return f"{per_s:.2f}/s" if per_s < 10 else f"{per_s:.0f}/s"


def dollars(micros: int) -> str:
    """Micro-dollars as a plain number of dollars for a form field: ``2.5``, ``0.000123``."""
    whole, frac = divmod(int(micros), 1_000_000)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".")
