"""The market on the wire: offers, host profiles, the book, quotes, reservations, credits,
statements and earnings. Money is integer micro-dollars; prices are per device-hour (per
core-hour and GiB-hour for CPU-only capacity)."""

from __future__ import annotations

from pydantic import Field, model_validator

from crucible.protocol.apps import MAX_PRICE_MICROS
from crucible.protocol.common import MAX_WIRE_INT, HostLabel, PrintableText, Wire, WireInt, Words
from crucible.protocol.hosts import HostVerification

__all__ = [
    "BookInfo",
    "ClearingInfo",
    "CreditGrant",
    "CreditInfo",
    "DailyCap",
    "EarningsLine",
    "EarningsReport",
    "HostMarketInfo",
    "HostProfileUpdate",
    "LevelInfo",
    "OfferInfo",
    "OfferUpdate",
    "QuoteInfo",
    "QuoteRequest",
    "QuoteTerms",
    "ReservationInfo",
    "ReserveCreate",
]

_PRICE = Field(ge=0, le=MAX_PRICE_MICROS)
_MODEL = Field(min_length=1, max_length=32)


class OfferUpdate(Wire):
    """A host's terms for one device type: a GPU model it has, or ``cpu``."""

    device_type: PrintableText = _MODEL
    on_demand_micros: int = _PRICE
    interruptible_min_micros: int = _PRICE
    reserved_micros: int = _PRICE
    memory_on_demand_micros: int = Field(default=0, ge=0, le=MAX_PRICE_MICROS)
    memory_interruptible_micros: int = Field(default=0, ge=0, le=MAX_PRICE_MICROS)
    memory_reserved_micros: int = Field(default=0, ge=0, le=MAX_PRICE_MICROS)


class OfferInfo(OfferUpdate):
    priced: bool  # False: the exchange's default terms (the host has not priced it)


class HostProfileUpdate(Wire):
    draining: bool | None = None
    energy_source: Words | None = None
    carbon_g_per_kwh: int | None = Field(default=None, ge=0, le=5000)


class HostMarketInfo(Wire):
    host_id: str
    name: str
    region: str
    state: str
    draining: bool
    reliability: float  # 0..1, published
    leases_ended: WireInt
    leases_faulted: WireInt
    energy_source: str
    carbon_g_per_kwh: WireInt | None
    offers: list[OfferInfo]
    # Tenancy: whether strangers' code may run here (the agent's measured isolation is full),
    # that isolation in one line, and the self-test's verdict (see HostInfo).
    isolated: bool = False
    isolation: str = ""
    verified: bool = False
    verification: HostVerification | None = None


class LevelInfo(Wire):
    price_micros: WireInt
    devices: WireInt


class ClearingInfo(Wire):
    at_ms: WireInt
    tier: str
    price_micros: WireInt
    devices: WireInt
    host_id: str


class BookInfo(Wire):
    device_type: str
    at_ms: WireInt
    asks: list[LevelInfo]
    interruptible_minimums: list[LevelInfo]
    standing_bids: list[LevelInfo]
    recent: list[ClearingInfo]
    free_devices: WireInt
    listed_devices: WireInt
    leased: dict[str, WireInt]


class QuoteRequest(Wire):
    """``gpu`` as builders write it (``H100``, ``4xH100``, ``H100:4``, ``cpu``)."""

    gpu: str = Field(min_length=1, max_length=40)
    nodes: int = Field(default=1, ge=1, le=1024)
    tier: str = Field(default="on_demand", pattern=r"^(on_demand|interruptible|reserved)$")
    bid_micros: int | None = Field(default=None, ge=0, le=MAX_PRICE_MICROS)
    max_price_micros: int | None = Field(default=None, ge=0, le=MAX_PRICE_MICROS)
    region: HostLabel | None = None  # as hosts name theirs
    min_reliability_ppm: int = Field(default=0, ge=0, le=1_000_000)
    prefer: str = Field(default="cheapest", pattern=r"^(cheapest|greenest|fastest)$")
    max_carbon_g_per_kwh: int | None = Field(default=None, ge=0, le=5000)
    verified: bool = False  # only hosts whose self-test matched the GPU catalog


class QuoteTerms(Wire):
    """A quote's answer: available at a price, or refused with why."""

    available: bool
    model: str | None = None
    tier: str | None = None
    price_micros: WireInt | None = None  # per device-hour (the highest among the nodes)
    rate_micros_per_hour: WireInt = 0  # everything asked, per hour
    hosts: list[str] = Field(default_factory=list)
    preempts: WireInt = 0
    refusal: str | None = None  # stable code (docs/market.md)
    message: str | None = None
    min_winning_bid_micros: WireInt | None = None


class QuoteInfo(QuoteTerms):
    # The renter's reservations the request would run inside (already paid: rate 0 for
    # those nodes), and then what the same request would get outside them (its own tier).
    reservations: list[str] = Field(default_factory=list)
    without_reservations: QuoteTerms | None = None


class ReserveCreate(Wire):
    gpu: str = Field(min_length=1, max_length=40)  # "8xH100"
    nodes: int = Field(default=1, ge=1, le=1024)
    start_ms: int = Field(ge=0, le=MAX_WIRE_INT)
    hours: float = Field(gt=0, le=366 * 24)
    max_price_micros: int | None = Field(default=None, ge=0, le=MAX_PRICE_MICROS)
    region: HostLabel | None = None  # as hosts name theirs
    min_reliability_ppm: int = Field(default=0, ge=0, le=1_000_000)
    prefer: str = Field(default="cheapest", pattern=r"^(cheapest|greenest|fastest)$")
    verified: bool = False  # only hosts whose self-test matched the GPU catalog


class ReservationInfo(Wire):
    id: str
    model: str
    count: WireInt
    nodes: WireInt
    hosts: list[str]
    start_ms: WireInt
    end_ms: WireInt
    price_micros: WireInt  # per device-hour (highest block)
    cost_micros: WireInt  # the whole window, charged when reserved


class CreditGrant(Wire):
    account: str = Field(min_length=1, max_length=64)  # name or id
    amount_micros: int = Field(gt=0, le=10**15)
    # Idempotency: the same key grants once (retries are safe). Empty: a new grant.
    # Both are shown to the account (statements, CSV): printable text, no control characters.
    key: PrintableText = Field(default="", max_length=100)
    memo: PrintableText = Field(default="", max_length=500)


class DailyCap(Wire):
    account: str = Field(min_length=1, max_length=64)
    cap_micros: int | None = Field(default=None, ge=0, le=10**15)


class CreditInfo(Wire):
    account_id: str
    balance_micros: WireInt
    spent_today_micros: WireInt
    daily_cap_micros: WireInt | None
    ok: bool
    reason: str
    # Whether this exchange refuses work without credit (CRUCIBLE_REQUIRE_CREDITS); when it
    # does not, ``ok`` False only means the balance is spent, and work still runs.
    required: bool = True


class EarningsLine(Wire):
    key: str  # the lease (container) id, or the UTC day (YYYY-MM-DD)
    host_id: str
    device_type: str | None = None
    tier: str | None = None
    ms: WireInt
    charged_micros: WireInt
    fee_micros: WireInt
    earned_micros: WireInt
    energy_mwh: WireInt = 0  # what the metered leases drew (milliwatt-hours)
    carbon_mg: WireInt = 0  # and emitted (milligrams of CO2)


class EarningsReport(Wire):
    by: str  # lease | day
    lines: list[EarningsLine]
    charged_micros: WireInt
    fee_micros: WireInt
    earned_micros: WireInt
    energy_mwh: WireInt = 0
    carbon_mg: WireInt = 0

    @model_validator(mode="after")
    def _sums(self) -> EarningsReport:
        if self.charged_micros != self.fee_micros + self.earned_micros:
            raise ValueError("earnings must add up: charged = fee + earned")
        return self
