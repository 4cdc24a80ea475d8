"""The market (pure core): hosts sell device-hours, renters buy them on-demand, as
interruptible bids, or as reservations; placement, preemption and the book.

Where things are:

- ``terms``: tiers, end reasons, preferences, refusal codes, the CPU-only device type;
- ``rules``: :class:`MarketRules` (the operator's knobs) and the ranking arithmetic
  (effective price = price adjusted for reliability);
- ``offers``: :class:`HostSpec`, :class:`Offer`; ``orders``: :class:`LeaseRequest`,
  :class:`ReserveRequest`; ``leases``: :class:`Lease`, :class:`Reservation`;
- ``decisions``: what the market returns (grants, preemptions, refusals, quotes, the book);
- ``book``: :class:`Market`, the one stateful object and the operations the shell calls;
- ``placement`` (lease decisions and preemption), ``reservations`` (windows and their
  events), ``refusals`` (why, in words), ``index`` and ``state`` (the indexes that keep every
  operation off a fleet scan), ``audit`` (their from-scratch check);
- ``charges``: leases and reservations as metered intervals for the ledger.

The rules are published in ``docs/market.md``. Money is integer micro-dollars, time integer
milliseconds passed in by the caller; nothing here does I/O.
"""

from __future__ import annotations

from crucible.core.market.book import Market
from crucible.core.market.charges import lease_intervals, reservation_intervals
from crucible.core.market.decisions import (
    Advanced,
    BookView,
    ClearingPrice,
    HostWentOffline,
    LeaseDecision,
    LeaseGranted,
    Preemption,
    PriceLevel,
    Quote,
    Refusal,
    ReservationDecision,
    ReservationGranted,
)
from crucible.core.market.leases import Lease, Reservation, ReservedBlock
from crucible.core.market.offers import HostSpec, Offer
from crucible.core.market.orders import LeaseRequest, ReserveRequest
from crucible.core.market.rules import MarketRules, effective_price
from crucible.core.market.terms import (
    CPU,
    EndReason,
    PreemptCause,
    Prefer,
    RefusalCode,
    Tier,
)

__all__ = [
    "CPU",
    "Advanced",
    "BookView",
    "ClearingPrice",
    "EndReason",
    "HostSpec",
    "HostWentOffline",
    "Lease",
    "LeaseDecision",
    "LeaseGranted",
    "LeaseRequest",
    "Market",
    "MarketRules",
    "Offer",
    "PreemptCause",
    "Preemption",
    "Prefer",
    "PriceLevel",
    "Quote",
    "Refusal",
    "RefusalCode",
    "Reservation",
    "ReservationDecision",
    "ReservationGranted",
    "ReserveRequest",
    "ReservedBlock",
    "Tier",
    "effective_price",
    "lease_intervals",
    "reservation_intervals",
]
