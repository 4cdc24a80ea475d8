"""Metering v0: the pure core.

A container is charged from the moment its agent started it until it stopped (or its lease
ended, if sooner), in whole milliseconds, at a rate fixed when it was placed: its lease's price
(micro-dollars per hour, see :mod:`crucible.core.market`). Running containers
are metered in closed intervals so a crash loses at most the open interval's bookkeeping,
never money already recorded; intervals are keyed by (container, start) so metering one twice
is a no-op.

Rounding never drifts: the cost of ``[start, end)`` is ``C(end) - C(start)`` where
``C(t) = floor(rate * (t - origin) / 3 600 000)`` is the container's cumulative cost, so the
intervals of a container always add up to exactly its whole-lifetime cost.

Energy and carbon ride beside the cost. The agent reports each container's energy since it
started (milliwatt-hours); the intervals metered at a tick share what was reported since the
last tick in proportion to their length (:func:`energy_split`; energy reported after an
interval closed goes to the next one, and a stopped container's last report closes its
account). A container whose agent reports no energy is estimated from the catalog's power
figures (:func:`estimated_energy_mwh`). Emissions are the energy at the host's carbon
intensity when the interval was metered (:func:`carbon_mg`), rounded per interval.
"""

from __future__ import annotations

__all__ = [
    "GIB",
    "MS_PER_HOUR",
    "MS_PER_MONTH",
    "carbon_mg",
    "energy_split",
    "estimated_energy_mwh",
    "estimated_watts",
    "interval_cost",
    "intervals_due",
    "storage_cost",
]

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


def energy_split(total_mwh: int, intervals: list[tuple[int, int]]) -> list[int]:
    """Share ``total_mwh`` among ``intervals`` in proportion to their lengths, in integers
    that add up to exactly ``total_mwh`` (negative totals count as 0)."""
    total = max(0, total_mwh)
    span = sum(end - start for start, end in intervals)
    if not intervals:
        return []
    if span <= 0:
        return [total] + [0] * (len(intervals) - 1)
    out: list[int] = []
    done_ms = 0
    given = 0
    for start, end in intervals:
        done_ms += end - start
        upto = total * done_ms // span
        out.append(upto - given)
        given = upto
    return out


def estimated_watts(
    gpu_tdp_watts: int, gpus: int, cpu_cores: float, cpu_core_watts: float
) -> float:
    """The catalog estimate for a container nobody measured: its GPUs at their maximum
    power and its reserved cores busy (it errs high, never low)."""
    return gpus * gpu_tdp_watts + cpu_cores * cpu_core_watts


def estimated_energy_mwh(watts: float, origin_ms: int, start_ms: int, end_ms: int) -> int:
    """Energy of ``[start_ms, end_ms)`` at a constant ``watts``, cumulative from ``origin_ms``
    like :func:`interval_cost` (so a container's intervals add up without drift)."""
    if not origin_ms <= start_ms <= end_ms:
        raise ValueError(f"interval [{start_ms}, {end_ms}) does not follow origin {origin_ms}")
    milliwatts = int(watts * 1000)
    # W x ms = mWh x 3600: cumulative milliwatt-milliseconds over 3 600 000.
    return (milliwatts * (end_ms - origin_ms)) // MS_PER_HOUR - (
        milliwatts * (start_ms - origin_ms)
    ) // MS_PER_HOUR


def carbon_mg(energy_mwh: int, g_per_kwh: int | None) -> int:
    """Milligrams of CO2 for ``energy_mwh`` at ``g_per_kwh`` (None: undeclared, counted as 0),
    rounded half up: mWh x g/kWh / 1000 = mg."""
    if g_per_kwh is None or energy_mwh <= 0 or g_per_kwh <= 0:
        return 0
    return (energy_mwh * g_per_kwh + 500) // 1000
