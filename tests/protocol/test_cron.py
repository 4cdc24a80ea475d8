"""The cron grammar and next-tick arithmetic (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from crucible.protocol.schedules import ScheduleSpec, next_tick_ms, parse_cron


def ms(*args: int, tz: dt.tzinfo = dt.UTC) -> int:
    return int(dt.datetime(*args, tzinfo=tz).timestamp() * 1000)


def cron(expr: str, timezone: str = "UTC") -> ScheduleSpec:
    return ScheduleSpec(kind="cron", cron=expr, timezone=timezone)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/5 * * * *", ms(2026, 12, 4, 11, 2), ms(2026, 12, 4, 11, 5)),
        ("*/5 * * * *", ms(2026, 12, 4, 11, 5), ms(2026, 12, 4, 11, 10)),  # strictly after
        ("0 9 * * mon-fri", ms(2026, 12, 4, 10, 0), ms(2026, 12, 7, 9, 0)),  # Fri -> Mon
        ("30 2 1 * *", ms(2026, 12, 4), ms(2027, 1, 1, 2, 30)),
        ("0 0 29 2 *", ms(2026, 3, 1), ms(2028, 2, 29)),  # the next leap day
        ("15,45 8-9 * jan,jul *", ms(2026, 12, 4), ms(2027, 1, 1, 8, 15)),
        ("0 12 * * 7", ms(2026, 12, 4), ms(2026, 12, 6, 12)),  # 7 is Sunday too
        ("0 0 13 * fri", ms(2026, 12, 4, 1), ms(2026, 12, 11)),  # either day field matches
    ],
)
def test_next_tick(expr: str, after: int, expected: int) -> None:
    assert next_tick_ms(cron(expr), after, 0) == expected


def test_time_zones_and_daylight_saving() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    spec = cron("30 2 * * *", "Europe/Paris")
    # 2026-03-29: 02:30 does not exist in Paris (clocks jump 02:00 -> 03:00): that day is skipped.
    first = next_tick_ms(spec, ms(2026, 3, 28, 12), 0)
    assert first == ms(2026, 3, 30, 0, 30)
    # In winter, 02:30 Paris is 01:30 UTC.
    assert next_tick_ms(spec, ms(2026, 1, 10, 12), 0) == ms(2026, 1, 11, 2, 30, tz=paris)


def test_periods_keep_their_phase() -> None:
    spec = ScheduleSpec(kind="period", period_s=300)
    anchor = ms(2026, 12, 4, 11, 0, 7)
    assert next_tick_ms(spec, anchor, anchor) == anchor + 300_000
    # Long after (the exchange was down): the next tick on the grid, not a burst of missed ones.
    assert next_tick_ms(spec, anchor + 3_600_000 + 1, anchor) == anchor + 3_900_000


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "needs 5 fields"),
        ("60 * * * *", "minute 60 is outside 0-59"),
        ("* 24 * * *", "hour 24 is outside 0-23"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("* * * foo *", "month 'foo'"),
        ("0 0 30 2 *", "never matches"),
        ("1,,2 * * * *", "empty list item"),
    ],
)
def test_bad_cron_expressions_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron(expr)


def test_unknown_time_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        cron("* * * * *", "Mars/Olympus")
    # A folder of the zone database (a region, not a zone) raised IsADirectoryError: a 500
    # from the server, a raw traceback from the SDK.
    for region in ("Europe", "America", "__pycache__"):
        with pytest.raises(ValueError, match=f"unknown time zone '{region}'"):
            cron("* * * * *", region)


def test_spec_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError):
        ScheduleSpec(kind="cron", period_s=60)
    with pytest.raises(ValueError):
        ScheduleSpec(kind="period", cron="* * * * *", period_s=60)
    assert parse_cron("0 0 * * sun").weekdays == frozenset({0})
