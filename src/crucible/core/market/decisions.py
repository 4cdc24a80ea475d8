"""What the market decides, as data: the shell persists it and acts on it (starts
containers, sends SIGTERM and later SIGKILL, answers the renter). Nothing here acts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crucible.core.market.leases import Lease, Reservation
from crucible.core.market.orders import LeaseRequest
from crucible.core.market.terms import PreemptCause, RefusalCode, Tier

__all__ = [
    "Advanced",
    "BookView",
    "ClearingPrice",
    "HostWentOffline",
    "LeaseDecision",
    "LeaseGranted",
    "Preemption",
    "PriceLevel",
    "Quote",
    "Refusal",
    "ReservationDecision",
    "ReservationGranted",
]


@dataclass(frozen=True, slots=True)
class Preemption:
    """A running interruptible lease must give its devices up.

    ``lease`` is the lease as ended (``end_ms`` = ``notice_ms``, reason ``preempted``):
    metering stops at the notice. The shell sends SIGTERM to its containers at ``notice_ms``
    and SIGKILL at ``deadline_ms`` (the grace period lets them checkpoint), and requeues their
    calls as preempted, not failed. ``by_id`` is the lease or reservation that needed the
    devices and ``by_price`` what it pays per device-hour, always strictly more than the
    preempted bid."""

    lease: Lease
    notice_ms: int
    deadline_ms: int
    cause: PreemptCause
    by_id: str
    by_price: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request cannot be served now, in words a builder can act on. In a quote of an
    interruptible request refused for capacity, ``min_winning_bid`` is the lowest bid that
    would win now (on free capacity or by preempting), when one exists within ``max_price``;
    lease decisions leave it ``None``."""

    code: RefusalCode
    message: str
    min_winning_bid: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    """New leases (one per node) and the leases preempted to make room for them.
    ``version`` ties the decision to the market state it was computed from (see
    :meth:`~crucible.core.market.book.Market.apply`)."""

    leases: tuple[Lease, ...]
    preemptions: tuple[Preemption, ...]
    at_ms: int
    version: int


LeaseDecision = LeaseGranted | Refusal


@dataclass(frozen=True, slots=True)
class ReservationGranted:
    """A reservation, and the interruptible leases on its devices that are preempted at once
    because its window starts within one grace period (leases preempted later, at the window's
    notice time, are reported by :meth:`~crucible.core.market.book.Market.advance`)."""

    reservation: Reservation
    preemptions: tuple[Preemption, ...]
    at_ms: int
    version: int


ReservationDecision = ReservationGranted | Refusal


@dataclass(frozen=True, slots=True)
class Advanced:
    """What the passage of time did: interruptible leases preempted because a reservation's
    window is about to start, leases ended because their reservation's window closed, and the
    reservations whose windows started or ended."""

    preemptions: tuple[Preemption, ...] = ()
    expired: tuple[Lease, ...] = ()
    started: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostWentOffline:
    """The leases a lost host took down (ended, reason ``host_lost``) and the reservations
    with devices on it: their capacity is not delivered while it is away, which the shell
    credits back to the renter."""

    ended: tuple[Lease, ...]
    reservations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Quote:
    """What a request would get if it were made now, computed by the very code that grants
    leases (it is a lease decision that is not applied).

    ``price_micros_per_device_hour`` is the highest unit price among the nodes, and
    ``rate_micros_per_hour`` what all nodes together would be metered per hour (zero for
    nodes inside the renter's reservations). ``preempts`` counts the leases it would preempt.
    ``reservations``: the renter's reservations the nodes would run inside (already paid).
    """

    request: LeaseRequest
    available: bool
    model: str | None = None
    tier: Tier | None = None
    price_micros_per_device_hour: int | None = None
    rate_micros_per_hour: int = 0
    hosts: tuple[str, ...] = ()
    preempts: int = 0
    refusal: Refusal | None = None
    reservations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PriceLevel:
    price: int
    devices: int


@dataclass(frozen=True, slots=True)
class ClearingPrice:
    """A lease granted at a price (unit price per device-hour)."""

    at_ms: int
    tier: Tier
    price: int
    devices: int
    host_id: str


@dataclass(frozen=True, slots=True)
class BookView:
    """The book of one device type, over listed hosts (online, not draining, with an offer).

    ``asks`` are on-demand asks of free devices (ascending), ``interruptible_minimums`` the
    minimum bids of free devices (ascending), ``standing_bids`` the bids of running
    interruptible leases (descending), each as price levels with their device counts and at
    most ``depth`` levels. ``recent`` are the latest clearing prices, newest first.
    ``free_devices`` are devices no lease or reservation holds; ``leased`` counts devices in
    running leases by tier (on every host, listed or not)."""

    device_type: str
    at_ms: int
    asks: tuple[PriceLevel, ...]
    interruptible_minimums: tuple[PriceLevel, ...]
    standing_bids: tuple[PriceLevel, ...]
    recent: tuple[ClearingPrice, ...]
    free_devices: int
    listed_devices: int
    leased: Mapping[Tier, int]
