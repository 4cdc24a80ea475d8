"""The market's tunable rules and its ranking arithmetic.

**Effective price.** Offers are ranked by the price of a delivered hour, not of a leased one.
A host with reliability ``r`` (parts per million: the fraction of leased time it historically
delivered without a host fault) is taken to deliver ``r`` of every hour it is paid for, so::

    effective_price(price, r) = ceil(price * 1_000_000 / max(r, 1))

$2.00 at 0.95 ranks as $2.105263; $2.05 at 0.99 ranks as $2.070708 and wins. The renter pays
the price, never the effective price: it is only a ranking key.

**Ranking.** Among offers that fit (enough free devices on one host, not draining, in the
region asked, at or above ``min_reliability``, at or under ``max_price``):

- ``cheapest`` (the default): effective price, then carbon intensity (lower first, undeclared
  last), then locality to the renter's other work;
- ``greenest``: carbon intensity, then effective price, then locality;
- ``fastest``: the request's device types are tried fastest first (``MarketRules.model_speed``)
  instead of in the order given; within a type, as ``cheapest``.

Locality is 0 when the renter already holds a running lease on the host, 1 when it holds one
in the host's region, 2 otherwise; ties after that go to the host with the fewest free
devices of the type (packing, as the placement engine's best-fit: whole hosts stay free for
large and multi-node leases), then to the smaller host id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_GRACE_MS",
    "PPM",
    "UNDECLARED_CARBON",
    "MarketRules",
    "carbon_key",
    "effective_price",
    "under_carbon_cap",
]

PPM = 1_000_000
DEFAULT_GRACE_MS = 30_000
# Hosts that declare no carbon intensity rank after every host that does (gCO2/kWh; the
# dirtiest grids are near 1,000).
UNDECLARED_CARBON = 1_000_000


def effective_price(price_micros: int, reliability_ppm: int) -> int:
    """Price per delivered hour: ``ceil(price * 10**6 / max(reliability, 1))``."""
    return -(-price_micros * PPM // max(reliability_ppm, 1))


def carbon_key(carbon_g_per_kwh: int | None) -> int:
    return UNDECLARED_CARBON if carbon_g_per_kwh is None else carbon_g_per_kwh


def under_carbon_cap(cap: int | None, carbon_g_per_kwh: int | None) -> bool:
    """Whether a host of ``carbon_g_per_kwh`` (None: undeclared) may serve a request capped
    at ``cap`` (None: no cap). An undeclared intensity cannot be shown to be under a cap."""
    return cap is None or (carbon_g_per_kwh is not None and carbon_g_per_kwh <= cap)


@dataclass(frozen=True, slots=True)
class MarketRules:
    """The operator's knobs.

    - ``grace_ms``: time between a preemption's SIGTERM and its SIGKILL (the issue's default,
      30 s); metering of the preempted lease stops at the SIGTERM, and the devices' next lease
      starts (and is metered) from the SIGKILL deadline.
    - ``clearing_history``: how many recent clearing prices each book view keeps per type.
    - ``locality_scan``: how many equally ranked offers are examined for the locality
      tie-break (besides the renter's own hosts, which are always examined).
    - ``model_speed``: relative speed of device types for ``prefer="fastest"`` (higher is
      faster); the shell fills it from the GPU catalog. Types without a score rank last,
      in the request's order.
    - ``max_reservation_ms`` / ``max_reservation_lead_ms``: the longest window, and how far
      ahead a window may start (reserved devices take no other new lease from the moment
      they are reserved, so a far-off window would idle them).
    - ``min_reservation_ms``: the shortest window. And a window may start at most as far
      ahead as it lasts (or this minimum): the renter pays for the window only, while the
      devices are held from the purchase; a 4 ms window 29 days ahead held a host's GPUs for
      29 days for a few micro-dollars.
    """

    grace_ms: int = DEFAULT_GRACE_MS
    clearing_history: int = 50
    locality_scan: int = 64
    model_speed: Mapping[str, int] = field(default_factory=dict)
    max_reservation_ms: int = 366 * 86_400_000
    max_reservation_lead_ms: int = 30 * 86_400_000
    min_reservation_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if self.grace_ms < 0 or self.clearing_history < 0 or self.locality_scan < 1:
            raise ValueError("grace_ms and clearing_history must be >= 0, locality_scan >= 1")
