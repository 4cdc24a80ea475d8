"""Capacity granted to renters: leases and reservations (immutable records)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from crucible.core.market.terms import EndReason, Tier
from crucible.core.metering import interval_cost

__all__ = ["Lease", "Reservation", "ReservedBlock"]


@dataclass(frozen=True, slots=True)
class Lease:
    """Devices of one type on one host, granted to an account.

    ``price_micros_per_device_hour`` is fixed when the lease is granted (a later change of the
    host's offer does not touch it): the host's ask (on-demand), the bid (interruptible), or
    the reservation's price (reserved). CPU-only leases also pay ``memory_gib`` at
    ``memory_price_micros_per_gib_hour``.

    ``granted_ms`` is when the market decided; ``start_ms`` is when the devices are the
    lease's, later than ``granted_ms`` when they first had to be cleared of a preempted lease
    (its grace period). ``end_ms`` is ``None`` while it runs. Metering covers
    ``[start_ms, end_ms)``, never more. ``ends_by_ms`` is a known end (a reserved lease ends
    with its reservation's window).
    """

    lease_id: str
    account: str
    host_id: str
    device_type: str
    devices: tuple[int, ...]
    tier: Tier
    price_micros_per_device_hour: int
    granted_ms: int
    start_ms: int
    end_ms: int | None = None
    end_reason: EndReason | None = None
    memory_gib: int = 0
    memory_price_micros_per_gib_hour: int = 0
    reservation_id: str | None = None
    ends_by_ms: int | None = None

    @property
    def running(self) -> bool:
        return self.end_ms is None

    @property
    def count(self) -> int:
        return len(self.devices)

    @property
    def bid(self) -> int | None:
        """What an interruptible lease bid (its price); ``None`` for other tiers."""
        return self.price_micros_per_device_hour if self.tier is Tier.INTERRUPTIBLE else None

    @property
    def rate_micros_per_hour(self) -> int:
        """What metering charges per hour. Zero inside a reservation: the reservation is
        charged for its whole window instead, used or not."""
        if self.reservation_id is not None:
            return 0
        return (
            self.count * self.price_micros_per_device_hour
            + self.memory_gib * self.memory_price_micros_per_gib_hour
        )

    def ended(self, at_ms: int, reason: EndReason) -> Lease:
        """This lease ended at ``at_ms`` (not before it started: a lease let go while its
        devices were still being cleared ends with zero length)."""
        return replace(self, end_ms=max(at_ms, self.start_ms), end_reason=reason)


@dataclass(frozen=True, slots=True)
class ReservedBlock:
    host_id: str
    devices: tuple[int, ...]
    price_micros_per_device_hour: int

    @property
    def rate_micros_per_hour(self) -> int:
        return len(self.devices) * self.price_micros_per_device_hour


@dataclass(frozen=True, slots=True)
class Reservation:
    """Blocks of devices of one GPU model (one block per node, each on its own host) held for
    an account over ``[start_ms, end_ms)`` at the reserved price of each block's host. It is
    paid for the whole window whether used or not, and the account's leases run inside it
    first (tier ``reserved``, never preempted)."""

    reservation_id: str
    account: str
    model: str
    blocks: tuple[ReservedBlock, ...]
    start_ms: int
    end_ms: int
    # When what it costs starts, if later than the window (a window that starts now on devices
    # whose interruptible leases were preempted: they are free at the SIGKILL deadline, and
    # neither side pays for the grace). None: the window's start.
    paid_from_ms: int | None = None

    @property
    def billed_from_ms(self) -> int:
        return self.start_ms if self.paid_from_ms is None else self.paid_from_ms

    @property
    def count(self) -> int:
        """Devices per node."""
        return len(self.blocks[0].devices)

    @property
    def rate_micros_per_hour(self) -> int:
        return sum(b.rate_micros_per_hour for b in self.blocks)

    @property
    def cost_micros(self) -> int:
        """The whole window's price: each block metered over the window, rounded as metering
        rounds (down, on the running total)."""
        start = self.billed_from_ms
        return sum(
            interval_cost(b.rate_micros_per_hour, start, start, self.end_ms) for b in self.blocks
        )
