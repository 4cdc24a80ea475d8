"""The market's vocabulary: tiers, why leases end, ranking preferences, why requests are
refused, and the name of the CPU-only device type."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CPU", "EndReason", "PreemptCause", "Prefer", "RefusalCode", "Tier"]

# The device type of CPU-only capacity: its unit is one core (prices are per core-hour), and
# CPU leases also take memory (priced per GiB-hour). Every other device type is a GPU model.
CPU = "cpu"


class Tier(StrEnum):
    """How a lease is bought. On-demand pays the host's ask and is never preempted;
    interruptible pays its bid and can be preempted by a higher one; reserved runs inside a
    reservation bought in advance and is never preempted."""

    ON_DEMAND = "on_demand"
    INTERRUPTIBLE = "interruptible"
    RESERVED = "reserved"


class EndReason(StrEnum):
    RELEASED = "released"  # the renter (or the shell for it) let the lease go
    PREEMPTED = "preempted"  # outbid, or its devices were reserved by someone else
    HOST_LOST = "host_lost"  # the host went offline
    OUT_OF_CREDIT = "out_of_credit"  # the renter's balance or daily cap ran out
    EXPIRED = "expired"  # the reservation it ran in reached the end of its window


class Prefer(StrEnum):
    """How a renter ranks fitting offers (see :mod:`crucible.core.market.rules`)."""

    CHEAPEST = "cheapest"
    GREENEST = "greenest"
    FASTEST = "fastest"


class PreemptCause(StrEnum):
    OUTBID = "outbid"  # a new interruptible lease bid strictly more
    ON_DEMAND = "on_demand"  # a new on-demand lease pays an ask strictly above the bid
    RESERVATION = "reservation"  # a reservation paying strictly more starts on the devices


class RefusalCode(StrEnum):
    """Why a lease or reservation request was refused (stable: shells map them to errors)."""

    NO_OFFER = "no_offer"  # no listed host sells any of the requested device types
    TOO_LARGE = "too_large"  # no single host has that many devices of the type
    FILTERED = "filtered"  # hosts exist, but none in the region / at the reliability asked
    PRICE = "price"  # every fitting offer is above max_price
    BID_TOO_LOW = "bid_too_low"  # the bid is below every fitting host's interruptible minimum
    NO_CAPACITY = "no_capacity"  # everything that fits is taken by leases it may not preempt
    NO_RESERVATION = "no_reservation"  # tier=reserved with no active reservation that fits
    NOT_RESERVABLE = "not_reservable"  # CPU-only capacity is not sold as reservations (v1)
    NOT_ISOLATED = "not_isolated"  # hosts that fit run only their owner's code (not isolated)
    UNVERIFIED = "unverified"  # verified hosts were asked, and none that fits is verified
