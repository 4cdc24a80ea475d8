"""From capacity to money: the metered intervals of leases and reservations, ready for the
ledger. Pure; the shell calls these on its metering tick and posts what they return.

A lease is metered over ``[start_ms, end_ms)`` only, at the rate fixed when it was granted,
with the metering core's rounding (cumulative, so a lease's intervals add up to exactly its
whole cost); a lease inside a reservation is not metered (its reservation is). A reservation
is metered over its whole window, block by block (each block pays its own host), whether used
or not. Interval keys are ``lease:<id>:<start>`` and ``reservation:<id>:<host>:<start>``, so
metering the same interval twice posts nothing new.
"""

from __future__ import annotations

from crucible.core.ledger import MeteredInterval
from crucible.core.market.leases import Lease, Reservation
from crucible.core.metering import interval_cost, intervals_due

__all__ = ["lease_intervals", "reservation_intervals"]


def lease_intervals(
    lease: Lease, metered_until_ms: int | None, now_ms: int, max_interval_ms: int
) -> list[MeteredInterval]:
    """The closed intervals of ``lease`` to charge now: from where metering stopped
    (``metered_until_ms``; ``None``: nothing metered yet) up to the lease's end, or while it
    runs, up to ``now_ms`` in whole ``max_interval_ms`` pieces. Never past ``end_ms``."""
    if lease.reservation_id is not None:
        return []
    rate = lease.rate_micros_per_hour
    due = intervals_due(lease.start_ms, metered_until_ms, now_ms, lease.end_ms, max_interval_ms)
    return [
        MeteredInterval(
            key=f"lease:{lease.lease_id}:{start}",
            renter=lease.account,
            host=lease.host_id,
            meter=lease.lease_id,
            start_ms=start,
            end_ms=end,
            cost_micros=interval_cost(rate, lease.start_ms, start, end),
        )
        for start, end in due
    ]


def reservation_intervals(
    reservation: Reservation, metered_until_ms: int | None, now_ms: int, max_interval_ms: int
) -> list[MeteredInterval]:
    """The closed intervals of a reservation's window to charge now, one per block (host)
    and piece, up to ``now_ms`` (whole pieces) or the window's end once it has passed."""
    r = reservation
    begin = r.billed_from_ms
    if now_ms < begin:
        return []
    stopped = r.end_ms if now_ms >= r.end_ms else None
    due = intervals_due(begin, metered_until_ms, now_ms, stopped, max_interval_ms)
    return [
        MeteredInterval(
            key=f"reservation:{r.reservation_id}:{block.host_id}:{start}",
            renter=r.account,
            host=block.host_id,
            meter=f"{r.reservation_id}:{block.host_id}",
            start_ms=start,
            end_ms=end,
            cost_micros=interval_cost(block.rate_micros_per_hour, begin, start, end),
        )
        for block in r.blocks
        for start, end in due
    ]
