"""Factories for the market and ledger tests: hosts, offers, requests, and unwrapping
decisions. Prices are given in dollars for readability and stored in micro-dollars."""

from __future__ import annotations

from typing import Any

from crucible.core.market import (
    HostSpec,
    LeaseDecision,
    LeaseGranted,
    LeaseRequest,
    Market,
    MarketRules,
    Offer,
    Refusal,
    ReservationDecision,
    ReservationGranted,
    ReserveRequest,
    Tier,
)

PPM = 1_000_000
HOUR = 3_600_000
GRACE = 30_000


def usd(dollars: float) -> int:
    return round(dollars * 1_000_000)


def gpu_host(
    host_id: str,
    model: str = "H100",
    n: int = 8,
    *,
    region: str = "eu",
    reliability: float = 1.0,
    carbon: int | None = None,
    energy: str = "grid",
) -> HostSpec:
    return HostSpec(
        host_id,
        region,
        gpus=tuple((i, model) for i in range(n)),
        reliability_ppm=round(reliability * PPM),
        energy_source=energy,
        carbon_g_per_kwh=carbon,
    )


def offer(ask: float, minimum: float | None = None, reserved: float | None = None) -> Offer:
    """An offer at ``ask`` $/device-hour; the minimum bid defaults to half the ask and the
    reserved price to 80 % of it."""
    return Offer(
        on_demand=usd(ask),
        interruptible_min=usd(ask / 2 if minimum is None else minimum),
        reserved=usd(ask * 0.8 if reserved is None else reserved),
    )


def market(*hosts: tuple[HostSpec, Offer | None], rules: MarketRules | None = None) -> Market:
    """A market with these hosts, each offering its GPUs (all of one model) at its offer."""
    m = Market(rules or MarketRules(grace_ms=GRACE))
    for spec, terms in hosts:
        m.add_host(spec)
        if terms is not None:
            for model in spec.device_types():
                m.set_offer(spec.host_id, model, terms)
    return m


def req(
    account: str = "a",
    models: tuple[str, ...] | str = ("H100",),
    count: int = 1,
    *,
    tier: Tier = Tier.ON_DEMAND,
    lease_id: str = "",
    **kw: Any,
) -> LeaseRequest:
    if isinstance(models, str):
        models = (models,)
    return LeaseRequest(account, models, count, tier=tier, lease_id=lease_id, **kw)


def bid(
    account: str, price: float | None, count: int = 1, lease_id: str = "", **kw: Any
) -> LeaseRequest:
    """An interruptible request bidding ``price`` $/device-hour (``None``: the minimum)."""
    return req(
        account,
        kw.pop("models", ("H100",)),
        count,
        tier=Tier.INTERRUPTIBLE,
        lease_id=lease_id,
        bid=None if price is None else usd(price),
        **kw,
    )


def granted(decision: LeaseDecision) -> LeaseGranted:
    assert isinstance(decision, LeaseGranted), decision
    return decision


def refused(decision: LeaseDecision | ReservationDecision) -> Refusal:
    assert isinstance(decision, Refusal), decision
    return decision


def reserved(decision: ReservationDecision) -> ReservationGranted:
    assert isinstance(decision, ReservationGranted), decision
    return decision


def reserve_req(
    rid: str,
    account: str,
    count: int,
    start_ms: int,
    end_ms: int,
    model: str = "H100",
    **kw: Any,
) -> ReserveRequest:
    return ReserveRequest(rid, account, model, count, start_ms, end_ms, **kw)
