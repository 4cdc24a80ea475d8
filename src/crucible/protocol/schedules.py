"""Schedules: when a deployed function runs by itself (``schedule=crucible.Cron(...)`` or
``crucible.Period(...)``).

The cron grammar is the classic five fields, ``minute hour day-of-month month day-of-week``,
each ``*``, a number, a range ``a-b``, a list ``a,b,c`` and a step ``*/n`` or ``a-b/n``; months
and weekdays also by their English three-letter names; day-of-week 0 or 7 is Sunday. When both
day fields are restricted, a day matches if either does (as in Vixie cron). Times are taken in
the schedule's IANA time zone; a wall-clock time that a daylight-saving change skips does not
run that day, one that it repeats runs once (at its first occurrence).

:func:`next_tick_ms` is pure: given a schedule and an instant, the first tick strictly after it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator

from crucible.protocol.common import Wire

__all__ = ["CronFields", "ScheduleSpec", "next_tick_ms", "parse_cron"]

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (low, high, names) per field; names map to low + index.
_FIELDS: tuple[tuple[str, int, int, list[str]], ...] = (
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day of month", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
MIN_PERIOD_S = 1.0
MAX_PERIOD_S = 366 * 86400.0


@dataclass(frozen=True)
class CronFields:
    """The five expanded fields of a cron expression, and whether each day field was ``*``."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_any: bool
    dow_any: bool


def _value(token: str, name: str, low: int, high: int, names: list[str]) -> int:
    lowered = token.lower()
    if names and lowered in names:
        return low + names.index(lowered) if name != "day of week" else names.index(lowered)
    if not (token.isascii() and token.isdigit()):
        raise ValueError(f"cron {name} {token!r} is not a number in {low}-{high}")
    value = int(token)
    if not low <= value <= high:
        raise ValueError(f"cron {name} {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int, names: list[str]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"cron {name} {text!r} has an empty list item")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise ValueError(f"cron {name} step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _value(a, name, low, high, names), _value(b, name, low, high, names)
            if first > last:
                raise ValueError(f"cron {name} range {base!r} runs backwards")
        else:
            first = _value(base, name, low, high, names)
            last = high if step_text else first
        out.update(range(first, last + 1, step))
    return frozenset(out)


@lru_cache(maxsize=256)
def parse_cron(expression: str) -> CronFields:
    """Expand a five-field cron expression; ValueError names the field that is wrong."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(
            f"cron expression {expression!r} needs 5 fields (minute hour day-of-month month "
            f"day-of-week), got {len(parts)}"
        )
    expanded = [
        _field(text, name, low, high, names)
        for text, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
    ]
    minutes, hours, days, months, dow = expanded
    if 7 in dow:
        dow = (dow - {7}) | {0}
    return CronFields(minutes, hours, days, months, dow, parts[2] == "*", parts[4] == "*")


def _day_matches(fields: CronFields, day: dt.date) -> bool:
    if day.month not in fields.months:
        return False
    dom = day.day in fields.days
    dow = (day.isoweekday() % 7) in fields.weekdays
    if fields.dom_any or fields.dow_any:
        return dom and dow
    return dom or dow


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a folder of the zone database ("Europe", "America"), or
        # one it cannot read.
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def _cron_next(fields: CronFields, zone: ZoneInfo, after_ms: int) -> int:
    start = dt.datetime.fromtimestamp(after_ms / 1000, tz=dt.UTC).astimezone(zone)
    day = start.date()
    hours, minutes = sorted(fields.hours), sorted(fields.minutes)
    for _ in range(366 * 5):  # any valid expression matches within 5 years (Feb 29)
        if _day_matches(fields, day):
            for hour in hours:
                for minute in minutes:
                    naive = dt.datetime(day.year, day.month, day.day, hour, minute)
                    local = naive.replace(tzinfo=zone, fold=0)
                    # A wall-clock time skipped by a DST change does not exist: skip it.
                    if local.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) != naive:
                        continue
                    ms = int(local.timestamp() * 1000)
                    if ms > after_ms:
                        return ms
        day += dt.timedelta(days=1)
    raise ValueError("the cron expression never matches (e.g. February 30)")


class ScheduleSpec(Wire):
    """A function's schedule: exactly one of ``cron`` (with ``timezone``) or ``period_s``."""

    kind: Literal["cron", "period"]
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    period_s: float | None = Field(default=None, ge=MIN_PERIOD_S, le=MAX_PERIOD_S)

    @model_validator(mode="after")
    def _valid(self) -> ScheduleSpec:
        if self.kind == "cron":
            if self.cron is None or self.period_s is not None:
                raise ValueError("a cron schedule has 'cron' and no 'period_s'")
            parse_cron(self.cron)
            _cron_next(parse_cron(self.cron), _zone(self.timezone), 0)
        elif self.period_s is None or self.cron is not None:
            raise ValueError("a period schedule has 'period_s' and no 'cron'")
        return self

    def describe(self) -> str:
        if self.kind == "cron":
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.period_s:g} s"


def next_tick_ms(spec: ScheduleSpec, after_ms: int, anchor_ms: int) -> int:
    """The first tick of ``spec`` strictly after ``after_ms``. A period counts from
    ``anchor_ms`` (when the schedule was created), so ticks keep their phase across restarts."""
    if spec.kind == "period":
        assert spec.period_s is not None
        period_ms = max(1, round(spec.period_s * 1000))
        if after_ms < anchor_ms:
            return anchor_ms + period_ms
        return anchor_ms + ((after_ms - anchor_ms) // period_ms + 1) * period_ms
    assert spec.cron is not None
    return _cron_next(parse_cron(spec.cron), _zone(spec.timezone), after_ms)
