"""What renters ask the market for: a lease (:class:`LeaseRequest`) or a reservation
(:class:`ReserveRequest`). Prices are integer micro-dollars per device-hour (per core-hour
for CPU-only capacity). A malformed request raises
:class:`~crucible.errors.InvalidRequestError` when it is built; a well-formed request the
market cannot serve is refused with a :class:`~crucible.core.market.decisions.Refusal`."""

from __future__ import annotations

from dataclasses import dataclass

from crucible.core.ledger import format_usd
from crucible.core.market.rules import PPM
from crucible.core.market.terms import CPU, Prefer, Tier
from crucible.errors import InvalidRequestError

__all__ = ["LeaseRequest", "ReserveRequest"]


def _check_common(
    what: str,
    count: int,
    nodes: int,
    max_price: int | None,
    min_reliability_ppm: int,
) -> None:
    if count < 1:
        raise InvalidRequestError(f"{what}: count must be at least 1 device per node")
    if nodes < 1:
        raise InvalidRequestError(f"{what}: nodes must be at least 1")
    if max_price is not None and max_price < 0:
        raise InvalidRequestError(f"{what}: max_price cannot be negative")
    if not 0 <= min_reliability_ppm <= PPM:
        raise InvalidRequestError(f"{what}: min_reliability must be within 0..1 ({PPM} ppm)")


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A request for ``nodes`` leases of ``count`` devices each, every node on a different
    host and all of the same device type.

    ``models`` is a fallback order of device types (GPU models, or ``[CPU]`` alone). ``bid``
    is for interruptible requests only: ``None`` bids each host's minimum. ``max_price``
    bounds the unit price paid (``None``: no bound). ``memory_gib`` is per node, for CPU-only
    requests. ``lease_id`` names the lease (node ``i`` of a multi-node request is
    ``f"{lease_id}.{i}"``); quotes leave it empty. ``verified``: only hosts whose self-test
    matched the catalog. Hosts that do not isolate fully serve only their owner's requests.
    """

    account: str
    models: tuple[str, ...]
    count: int = 1
    nodes: int = 1
    tier: Tier = Tier.ON_DEMAND
    bid: int | None = None
    max_price: int | None = None
    region: str | None = None
    min_reliability_ppm: int = 0
    prefer: Prefer = Prefer.CHEAPEST
    memory_gib: int = 0
    lease_id: str = ""
    # Only hosts at or below this carbon intensity (gCO2/kWh; undeclared hosts are above any
    # cap). None: no cap.
    max_carbon_g_per_kwh: int | None = None
    verified: bool = False
    # The function asks for network egress: another account's host must filter it.
    network: bool = False
    # A cluster member (a gang of ``nodes``): another account's host must build the
    # cluster's private network.
    cluster: bool = False
    # Whether the renter's own reservations are used first (a quote asks without them too:
    # what the request would cost outside them).
    use_reservations: bool = True

    def __post_init__(self) -> None:
        what = "lease request"
        if self.max_carbon_g_per_kwh is not None and self.max_carbon_g_per_kwh < 0:
            raise InvalidRequestError(f"{what}: max_carbon_g_per_kwh must be >= 0")
        if not self.account:
            raise InvalidRequestError(f"{what}: an account is required")
        if not self.models:
            raise InvalidRequestError(f"{what}: name at least one device type")
        if len(set(self.models)) != len(self.models):
            raise InvalidRequestError(f"{what}: a device type appears twice in {self.models}")
        if CPU in self.models and len(self.models) > 1:
            raise InvalidRequestError(f"{what}: {CPU!r} cannot be mixed with GPU models")
        if self.memory_gib < 0 or (self.memory_gib and self.models != (CPU,)):
            raise InvalidRequestError(f"{what}: memory_gib is for CPU-only requests, >= 0")
        _check_common(what, self.count, self.nodes, self.max_price, self.min_reliability_ppm)
        if self.bid is not None:
            if self.tier is not Tier.INTERRUPTIBLE:
                raise InvalidRequestError(
                    f"{what}: a bid is for tier=interruptible; {self.tier.value} pays the "
                    "host's price"
                )
            if self.bid < 0:
                raise InvalidRequestError(f"{what}: a bid cannot be negative")
            if self.max_price is not None and self.bid > self.max_price:
                raise InvalidRequestError(
                    f"{what}: the bid ({format_usd(self.bid)}/device-hour) is above max_price "
                    f"({format_usd(self.max_price)}/device-hour); raise max_price or lower the bid"
                )

    def lease_ids(self) -> list[str]:
        if self.nodes == 1:
            return [self.lease_id]
        return [f"{self.lease_id}.{i}" for i in range(self.nodes)]


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """A request to reserve ``nodes`` blocks of ``count`` devices of one GPU model, each block
    on one host, for the window ``[start_ms, end_ms)`` at the hosts' reserved price.
    ``max_price`` bounds the reserved price per device-hour."""

    reservation_id: str
    account: str
    model: str
    count: int
    start_ms: int
    end_ms: int
    nodes: int = 1
    max_price: int | None = None
    region: str | None = None
    min_reliability_ppm: int = 0
    prefer: Prefer = Prefer.CHEAPEST
    verified: bool = False

    def __post_init__(self) -> None:
        what = "reservation"
        if not self.reservation_id or not self.account or not self.model:
            raise InvalidRequestError(f"{what}: an id, an account and a GPU model are required")
        _check_common(what, self.count, self.nodes, self.max_price, self.min_reliability_ppm)
        if self.end_ms <= self.start_ms:
            raise InvalidRequestError(f"{what}: the window must end after it starts")
