"""Metering v0: the pure core.

A container is charged from the moment its agent started it until it stopped (or its lease
ended, if sooner), in whole milliseconds, at a rate fixed when it was placed: its lease's price
(micro-dollars per hour, see :mod:`crucible.server.market`). Running containers
are metered in closed intervals so a crash loses at most the open interval's bookkeeping,
never money already recorded; intervals are keyed by (container, start) so metering one twice
is a no-op.

Rounding never drifts: the cost of ``[start, end)`` is ``C(end) - C(start)`` where
``C(t) = floor(rate * (t - origin) / 3 600 000)`` is the container's cumulative cost, so the
intervals of a container always add up to exactly its whole-lifetime cost.
"""

from __future__ import annotations

__all__ = ["GIB", "MS_PER_HOUR", "MS_PER_MONTH", "interval_cost", "intervals_due", "storage_cost"]

MS_PER_HOUR = 3_600_000
MS_PER_MONTH = 30 * 24 * MS_PER_HOUR  # a storage month is 30 days
GIB = 1024**3


def _cumulative(rate_per_hour: int, origin_ms: int, t_ms: int) -> int:
    return rate_per_hour * (t_ms - origin_ms) // MS_PER_HOUR


def interval_cost(rate_per_hour: int, origin_ms: int, start_ms: int, end_ms: int) -> int:
    """Cost of ``[start_ms, end_ms)`` for a container metered from ``origin_ms``."""
    if not origin_ms <= start_ms <= end_ms:
        raise ValueError(f"interval [{start_ms}, {end_ms}) does not follow origin {origin_ms}")
    return _cumulative(rate_per_hour, origin_ms, end_ms) - _cumulative(
        rate_per_hour, origin_ms, start_ms
    )


def intervals_due(
    started_ms: int,
    metered_until_ms: int | None,
    now_ms: int,
    stopped_ms: int | None,
    max_interval_ms: int,
) -> list[tuple[int, int]]:
    """The closed intervals to meter now: from where metering stopped to the container's stop
    (all of it) or, while it runs, up to ``now`` in whole ``max_interval_ms`` pieces (the
    open remainder waits for the next tick)."""
    begin = metered_until_ms if metered_until_ms is not None else started_ms
    out: list[tuple[int, int]] = []
    if stopped_ms is not None:
        end = max(begin, stopped_ms)
        while begin < end:
            nxt = min(end, begin + max_interval_ms)
            out.append((begin, nxt))
            begin = nxt
        return out
    while now_ms - begin >= max_interval_ms:
        out.append((begin, begin + max_interval_ms))
        begin += max_interval_ms
    return out


def storage_cost(
    size_bytes: int, price_micros_per_gib_month: int, start_ms: int, end_ms: int
) -> int:
    """What storing ``size_bytes`` over ``[start_ms, end_ms)`` costs, rounded down to the
    micro-dollar (volumes are metered in intervals of an hour or more, and at every commit,
    so the rounding is at most one micro-dollar per interval, in the renter's favour)."""
    if end_ms < start_ms or size_bytes < 0:
        raise ValueError(f"storage interval [{start_ms}, {end_ms}) of {size_bytes} bytes")
    return size_bytes * price_micros_per_gib_month * (end_ms - start_ms) // (GIB * MS_PER_MONTH)
