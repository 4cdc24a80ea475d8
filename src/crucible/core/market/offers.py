"""What hosts bring to the market: their devices and profile (:class:`HostSpec`) and their
asking terms per device type (:class:`Offer`). All prices are integer micro-dollars per
unit-hour: per GPU-hour for a GPU model, per core-hour (plus per GiB-hour of memory) for
CPU-only capacity."""

from __future__ import annotations

from dataclasses import dataclass

from crucible.core.market.rules import PPM
from crucible.core.market.terms import CPU, Tier
from crucible.errors import InvalidRequestError

__all__ = ["HostSpec", "Offer"]


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A host as the market sees it.

    ``gpus`` are (device index, model) pairs. ``cpu_cores`` and ``memory_gib`` are what the
    host sells as CPU-only capacity (0: none); they are a pool separate from the GPUs, so a
    host that sells both must not count the same cores twice. ``reliability_ppm`` is its
    published reliability score (parts per million; the shell derives it from heartbeat
    uptime while leased and leases completed without a host fault). ``carbon_g_per_kwh`` is
    its declared carbon intensity (``None``: not declared).

    Tenancy: ``owner`` is the account that registered the host; ``isolated`` says its agent
    measured full isolation (:meth:`admits` strangers' code only then), ``verified`` that its
    self-test matched the GPU catalog. The defaults (a fully isolated host of no account)
    keep the simulator's fleets open to every renter.
    """

    host_id: str
    region: str
    gpus: tuple[tuple[int, str], ...] = ()
    cpu_cores: int = 0
    memory_gib: int = 0
    reliability_ppm: int = PPM
    energy_source: str = "unknown"
    carbon_g_per_kwh: int | None = None
    owner: str = ""
    isolated: bool = True
    verified: bool = False
    egress: bool = True  # filters sandboxes' network egress (IsolationReport.egress_filter)
    # builds clusters' private networks (IsolationReport.cluster_network)
    cluster_net: bool = True

    def admits(
        self, account: str, *, verified: bool = False, network: bool = False, cluster: bool = False
    ) -> bool:
        """Whether ``account``'s code may run here: a host that does not isolate fully runs
        only its owner's code, and so does one that cannot filter egress for code that asks
        for ``network`` or cannot build a private network for a ``cluster`` member; a renter
        asking for ``verified`` hosts gets only those."""
        own = account == self.owner
        return (
            (self.isolated or own)
            and (self.egress or own or not network)
            and (self.cluster_net or own or not cluster)
            and (self.verified or not verified)
        )

    def __post_init__(self) -> None:
        if not self.host_id:
            raise InvalidRequestError("a host needs an id")
        if CPU in {m for _, m in self.gpus}:
            raise InvalidRequestError(f"{CPU!r} is the CPU-only device type, not a GPU model")
        indices = [i for i, _ in self.gpus]
        if len(set(indices)) != len(indices) or any(i < 0 for i in indices):
            raise InvalidRequestError(f"host {self.host_id}: GPU indices must be distinct and >= 0")
        if self.cpu_cores < 0 or self.memory_gib < 0:
            raise InvalidRequestError(f"host {self.host_id}: cores and memory must be >= 0")
        if not 0 <= self.reliability_ppm <= PPM:
            raise InvalidRequestError(f"host {self.host_id}: reliability must be within 0..{PPM}")
        if self.carbon_g_per_kwh is not None and self.carbon_g_per_kwh < 0:
            raise InvalidRequestError(f"host {self.host_id}: carbon intensity must be >= 0")

    def device_types(self) -> dict[str, tuple[int, ...]]:
        """Each device type the host has, with its unit indices (cores ``0..n-1`` for CPU)."""
        out: dict[str, list[int]] = {}
        for index, model in sorted(self.gpus):
            out.setdefault(model, []).append(index)
        if self.cpu_cores:
            out[CPU] = list(range(self.cpu_cores))
        return {m: tuple(v) for m, v in out.items()}


@dataclass(frozen=True, slots=True)
class Offer:
    """A host's asking terms for one device type, per unit-hour in micro-dollars.

    ``interruptible_min`` is the lowest bid the host accepts. Nothing forces it below
    ``on_demand`` (hosts price as they like), but a bid above the ask is legal and then
    cannot be preempted by on-demand requests on that host. The ``memory_*`` prices apply to
    CPU-only offers only (per GiB-hour, by tier); a GPU's share of the host's CPU and memory is
    included in its price.
    """

    on_demand: int
    interruptible_min: int
    reserved: int
    memory_on_demand: int = 0
    memory_interruptible: int = 0
    memory_reserved: int = 0

    def __post_init__(self) -> None:
        prices = (
            self.on_demand,
            self.interruptible_min,
            self.reserved,
            self.memory_on_demand,
            self.memory_interruptible,
            self.memory_reserved,
        )
        if any(p < 0 for p in prices):
            raise InvalidRequestError("prices must be >= 0 micro-dollars per hour")

    def price(self, tier: Tier) -> int:
        """The unit price for a tier (the interruptible price is the minimum bid)."""
        if tier is Tier.ON_DEMAND:
            return self.on_demand
        if tier is Tier.INTERRUPTIBLE:
            return self.interruptible_min
        return self.reserved

    def memory_price(self, tier: Tier) -> int:
        if tier is Tier.ON_DEMAND:
            return self.memory_on_demand
        if tier is Tier.INTERRUPTIBLE:
            return self.memory_interruptible
        return self.memory_reserved

    def has_memory_prices(self) -> bool:
        return bool(self.memory_on_demand or self.memory_interruptible or self.memory_reserved)
