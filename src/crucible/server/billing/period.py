"""The period a bill or a statement covers: ``since_ms`` (inclusive) to ``until_ms``
(exclusive), either end open. Each record counts by the moment that places it in time: a
metered interval by its start, a call by its submission, a ledger entry by when it was
posted, but a reservation's charge by the start of its window (as the daily cap counts it).
Model tokens are kept per UTC day (``model_usage.day``), so they count by the whole
days the period touches."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement

from crucible.core.ledger import MS_PER_DAY
from crucible.errors import InvalidRequestError

__all__ = ["Period"]


def _when(ms: int) -> str:
    """``ms`` as the query gave it, with its UTC date where it has one (years 1970-9999)."""
    try:
        date = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms"
    return f"{ms} ms, {date}"


@dataclass(frozen=True, slots=True)
class Period:
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def of(cls, since_ms: int | None, until_ms: int | None) -> Period:
        """A period from a request's query (each end bounded by the route's query
        parameters), refused when it cannot hold anything."""
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise InvalidRequestError(
                f"the period is empty: since_ms ({_when(since_ms)}) must be before until_ms "
                f"({_when(until_ms)})"
            )
        return cls(since_ms, until_ms)

    def where(self, column: Any) -> list[ColumnElement[bool]]:
        """Conditions keeping the rows whose ``column`` (milliseconds) falls in the period."""
        out: list[ColumnElement[bool]] = []
        if self.since_ms is not None:
            out.append(column >= self.since_ms)
        if self.until_ms is not None:
            out.append(column < self.until_ms)
        return out

    def days(self, column: Any) -> list[ColumnElement[bool]]:
        """Conditions keeping the rows whose ``column`` (a UTC day number) the period
        touches."""
        out: list[ColumnElement[bool]] = []
        if self.since_ms is not None:
            out.append(column >= self.since_ms // MS_PER_DAY)
        if self.until_ms is not None:
            out.append(column <= (self.until_ms - 1) // MS_PER_DAY)
        return out
