"""Times given on the command line (``--since``, ``--until``, ``--start``), in milliseconds."""

from __future__ import annotations

import datetime as dt
import re

import typer

from crucible.errors import InvalidRequestError

__all__ = ["SINCE", "UNTIL", "period_query", "when_ms"]

SINCE = typer.Option(
    None, "--since", help="From this time: today, 7d (ago), or a UTC date/time such as 2026-12-01."
)
UNTIL = typer.Option(None, "--until", help="Up to this time (not included); as --since.")

_AGO = re.compile(r"^(\d{1,6})([mhd])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def when_ms(option: str, text: str, *, ago: bool = False, now: dt.datetime | None = None) -> int:
    """``now``, ``today`` (this UTC day's start), an ISO date or time (UTC unless it says
    otherwise: ``2026-12-01``, ``2026-12-01T09:00``, ``2026-12-01T09:00+01:00``), or, with
    ``ago``, a duration before now (``30m``, ``24h``, ``7d``)."""
    now = now or dt.datetime.now(dt.UTC)
    word = text.strip().lower()
    if word == "now":
        return int(now.timestamp() * 1000)
    if word == "today":
        return int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
    relative = _AGO.match(word) if ago else None
    if relative is not None:
        return int(now.timestamp() * 1000) - int(relative[1]) * _UNIT_MS[relative[2]]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        shapes = "'now', 'today', " + ("a duration ago such as 7d or 24h, " if ago else "")
        raise InvalidRequestError(
            f"{option} {text!r}: use {shapes}or an ISO date or time such as 2026-12-01 or "
            "2026-12-01T09:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def period_query(since: str | None, until: str | None) -> dict[str, int]:
    """The ``since_ms``/``until_ms`` query of a bill or a statement (only what was given)."""
    out: dict[str, int] = {}
    if since is not None:
        out["since_ms"] = when_ms("--since", since, ago=True)
    if until is not None:
        out["until_ms"] = when_ms("--until", until, ago=True)
    return out
