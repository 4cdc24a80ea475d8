"""From leases and reservations to ledger intervals: metered from start to end, never after,
each exactly once; preempted leases stop at the notice."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.core.ledger import PLATFORM_FEES, Ledger, host_account, renter_account
from crucible.core.market import (
    EndReason,
    Lease,
    Tier,
    lease_intervals,
    reservation_intervals,
)
from crucible.core.metering import interval_cost

from market_testlib import (
    GRACE,
    HOUR,
    bid,
    gpu_host,
    granted,
    market,
    offer,
    req,
    reserve_req,
    reserved,
    usd,
)

PIECE = 600_000


def _lease(start: int, end: int | None, price: int = 1_000_000, count: int = 2) -> Lease:
    return Lease(
        "le-1",
        "ac-r",
        "ho-1",
        "H100",
        tuple(range(count)),
        Tier.ON_DEMAND,
        price,
        start,
        start,
        end,
    )


def test_a_running_lease_is_metered_in_whole_pieces_and_an_ended_one_to_its_end() -> None:
    lease = _lease(1_000, None)
    ivs = lease_intervals(lease, None, 1_000 + 2 * PIECE + 5, PIECE)
    assert [(i.start_ms, i.end_ms) for i in ivs] == [
        (1_000, 1_000 + PIECE),
        (1_000 + PIECE, 1_000 + 2 * PIECE),
    ]
    assert ivs[0].key == "lease:le-1:1000" and ivs[0].meter == "le-1"
    assert ivs[0].cost_micros == 2 * 1_000_000 * PIECE // HOUR
    ended = lease.ended(1_000 + 2 * PIECE + 5, EndReason.RELEASED)
    rest = lease_intervals(ended, ivs[-1].end_ms, 10 * HOUR, PIECE)
    assert [(i.start_ms, i.end_ms) for i in rest] == [(1_000 + 2 * PIECE, 1_000 + 2 * PIECE + 5)]
    assert lease_intervals(ended, ended.end_ms, 10 * HOUR, PIECE) == []


def test_leases_inside_reservations_are_not_metered_but_the_reservation_is() -> None:
    m = market((gpu_host("h", n=2), offer(2.0, reserved=1.5)), (gpu_host("g", n=2), offer(2.0)))
    r = reserved(m.reserve(reserve_req("r1", "acme", 2, 0, HOUR, nodes=2), 0)).reservation
    inside = granted(m.lease(req("acme", count=2, lease_id="in"), 0)).leases[0]
    assert lease_intervals(inside, None, HOUR, PIECE) == []
    ivs = reservation_intervals(r, None, 2 * HOUR, HOUR)
    # blocks in rank order: h reserves at $1.50, g at $1.60 (80 % of its ask)
    assert [(i.host, i.start_ms, i.end_ms) for i in ivs] == [("h", 0, HOUR), ("g", 0, HOUR)]
    assert sum(i.cost_micros for i in ivs) == r.cost_micros == 2 * usd(1.5) + 2 * usd(1.6)
    assert reservation_intervals(r, None, -1, HOUR) == []


def test_a_preempted_lease_stops_at_the_notice_and_the_new_one_pays_from_the_deadline() -> None:
    m = market((gpu_host("h", n=1), offer(3.0, minimum=0.1)))
    old = granted(m.lease(bid("a", 1.0, lease_id="old"), 0)).leases[0]
    g = granted(m.lease(bid("b", 2.0, lease_id="new"), HOUR))
    stopped = g.preemptions[0].lease
    new = g.leases[0]
    ledger = Ledger(fee_ppm=100_000)
    for iv in lease_intervals(stopped, None, 5 * HOUR, PIECE):
        ledger.charge(iv, 5 * HOUR)
    assert ledger.balance(renter_account("a")) == -usd(1.0) == -old.price_micros_per_device_hour
    assert lease_intervals(new, None, HOUR + GRACE - 1, PIECE) == []
    first = lease_intervals(new, None, HOUR + GRACE + PIECE, PIECE)
    assert first[0].start_ms == HOUR + GRACE
    for iv in first:
        ledger.charge(iv, 5 * HOUR)
    assert ledger.total() == 0
    assert ledger.balance(PLATFORM_FEES) + ledger.balance(host_account("h")) == usd(1.0) + sum(
        iv.cost_micros for iv in first
    )


@settings(max_examples=200, deadline=None, database=None)
@given(
    start=st.integers(0, 10**9),
    length=st.integers(0, 5 * HOUR),
    price=st.integers(0, 10**8),
    count=st.integers(1, 8),
    ticks=st.lists(st.integers(1, 2 * HOUR), max_size=12),
)
def test_any_metering_schedule_charges_exactly_the_lease_and_nothing_after_it(
    start: int, length: int, price: int, count: int, ticks: list[int]
) -> None:
    """Metered at arbitrary ticks while running, then once after it ended: every interval is
    inside [start, end), none twice, and together they cost exactly the whole lease."""
    lease = _lease(start, None, price, count)
    end = start + length
    ledger = Ledger(fee_ppm=250_000)
    until: int | None = None
    now = start
    seen: list[tuple[int, int]] = []
    for dt in ticks:
        now += dt
        if now >= end:
            break
        for iv in lease_intervals(lease, until, now, PIECE):
            seen.append((iv.start_ms, iv.end_ms))
            ledger.charge(iv, now)
            until = iv.end_ms
    ended = lease.ended(end, EndReason.RELEASED)
    for iv in lease_intervals(ended, until, end + HOUR, PIECE):
        seen.append((iv.start_ms, iv.end_ms))
        ledger.charge(iv, end + HOUR)
    assert all(start <= a <= b <= end for a, b in seen)
    assert all(b1 <= a2 for (_, b1), (a2, _) in pairwise(seen))
    whole = interval_cost(count * price, start, start, end)
    assert ledger.metered_total("le-1") == whole == -ledger.balance(renter_account("ac-r"))
    assert whole <= count * price * length // HOUR  # never above the price
    assert ledger.total() == 0
