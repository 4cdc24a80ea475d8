"""How a builder's market arguments (dollars, 0..1, names) become the wire's
:class:`MarketTerms`, with the checks every entry point shares: functions, pods, clusters,
and the CLI commands over them."""

from __future__ import annotations

from pydantic import ValidationError

from crucible.errors import InvalidRequestError
from crucible.protocol.apps import MarketTerms
from crucible.protocol.common import LABEL_RULE, is_host_label
from crucible.sdk._checks import (
    check_bool,
    check_choice,
    check_dollars,
    check_int,
    check_number,
    from_validation_error,
)

__all__ = ["MARKET_WIRE_NAMES", "market_terms"]

# Wire field names -> the argument a builder wrote.
MARKET_WIRE_NAMES = {
    "bid_micros": "bid",
    "max_price_micros": "max_price",
    "min_reliability_ppm": "min_reliability",
}


def market_terms(
    tier: str = "on_demand",
    bid: float | None = None,
    max_price: float | None = None,
    *,
    region: str | None = None,
    min_reliability: float = 0.0,
    prefer: str = "cheapest",
    max_carbon_g_per_kwh: int | None = None,
    verified: bool = False,
    where: str = "@app.function()",
) -> MarketTerms:
    """Dollars per device-hour → the wire's micro-dollars, with the market's own checks.

    ``tier`` is spelled ``on-demand`` (or ``on_demand``), ``interruptible`` or ``reserved``;
    ``bid`` is for ``interruptible`` only; ``region`` and ``min_reliability`` (0..1) filter
    hosts, ``prefer`` ranks them (cheapest, greenest, fastest); ``max_carbon_g_per_kwh``
    refuses hosts above that carbon intensity (and hosts that declare none); ``verified``
    runs only on hosts whose self-test matched the GPU catalog. ``where`` names the call
    in errors."""
    check_choice("tier", tier, ("on-demand", "interruptible", "reserved"), aliases=("on_demand",))
    wire_tier = tier.replace("-", "_")
    if bid is not None and wire_tier != "interruptible":
        raise InvalidRequestError(
            f"bid= is for tier='interruptible'; tier={tier!r} pays the host's price"
        )
    check_choice("prefer", prefer, ("cheapest", "greenest", "fastest"))
    if region is not None and not is_host_label(region):  # as hosts name theirs
        raise InvalidRequestError(f"region must be {LABEL_RULE}, got {str(region)[:80]!r}")
    reliability = check_number("min_reliability", min_reliability, 0, 1)
    assert reliability is not None
    check_int("max_carbon_g_per_kwh", max_carbon_g_per_kwh, 0, 5000, optional=True)
    check_bool("verified", verified)
    bid_m, max_m = check_dollars("bid", bid), check_dollars("max_price", max_price)
    if bid_m is not None and max_m is not None and bid_m > max_m:
        raise InvalidRequestError(f"bid={bid} is above max_price={max_price}; lower the bid")
    try:
        return MarketTerms(
            tier=wire_tier,
            bid_micros=bid_m,
            max_price_micros=max_m,
            region=region,
            min_reliability_ppm=round(reliability * 1_000_000),
            prefer=prefer,
            max_carbon_g_per_kwh=max_carbon_g_per_kwh,
            verified=verified,
        )
    except ValidationError as exc:
        raise from_validation_error(exc, where, MARKET_WIRE_NAMES) from None
