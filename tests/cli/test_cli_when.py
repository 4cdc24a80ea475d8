"""Times on the command line (`--since`, `--until`, `--start`): words, ISO dates and times
(UTC unless they say otherwise) and durations ago, with a clear error for anything else."""

from __future__ import annotations

import datetime as dt

import pytest

from crucible.cli._when import period_query, when_ms
from crucible.errors import InvalidRequestError

NOW = dt.datetime(2026, 12, 7, 15, 30, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def test_words_dates_and_durations() -> None:
    assert when_ms("--since", "now", now=NOW) == NOW_MS
    assert when_ms("--since", "today", now=NOW) == NOW_MS - (15 * 60 + 30) * 60_000
    assert when_ms("--since", "2026-12-01", now=NOW) == int(
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp() * 1000
    )
    # UTC unless stated: +01:00 is an hour earlier in UTC.
    utc = when_ms("--since", "2026-12-01T09:00", now=NOW)
    assert when_ms("--since", "2026-12-01T09:00+01:00", now=NOW) == utc - 3_600_000
    assert when_ms("--since", "2026-12-01T09:00Z", now=NOW) == utc
    assert when_ms("--since", "7d", ago=True, now=NOW) == NOW_MS - 7 * 86_400_000
    assert when_ms("--since", "24h", ago=True, now=NOW) == NOW_MS - 86_400_000
    assert when_ms("--since", "30m", ago=True, now=NOW) == NOW_MS - 1_800_000


@pytest.mark.parametrize("text", ["yesterday", "7 days", "-1d", "12/01/2026", ""])
def test_anything_else_names_the_option_and_the_shapes(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"--since .*use 'now', 'today', a duration"):
        when_ms("--since", text, ago=True, now=NOW)


def test_a_start_takes_no_duration() -> None:
    """A reservation's --start of '2h' would be ambiguous (ago? from now?): refused."""
    with pytest.raises(InvalidRequestError, match=r"--start '2h': use 'now', 'today', or an ISO"):
        when_ms("--start", "2h", now=NOW)


def test_a_period_query_holds_what_was_given() -> None:
    assert period_query(None, None) == {}
    assert set(period_query("7d", None)) == {"since_ms"}
    assert set(period_query(None, "2026-12-01")) == {"until_ms"}
