"""The scheduler reads a function's stored spec once, as the validated wire model, and the
market terms come from that typed ``market`` part (not from re-reading a JSON dict)."""

from __future__ import annotations

import orjson

from crucible.core.market import Prefer, Tier
from crucible.protocol.apps import FunctionCreate
from crucible.server.services.market import MarketTerms


def _stored(**fields: object) -> dict[str, object]:
    """A spec as the store holds it: FunctionCreate dumped to JSON and read back."""
    code = {"bundle": "a" * 64, "module": "m", "qualname": "f"}
    spec = FunctionCreate.model_validate({"name": "f", "code": code, **fields})
    parsed: dict[str, object] = orjson.loads(orjson.dumps(spec.model_dump(mode="json")))
    return parsed


def test_market_terms_come_from_the_typed_market_part() -> None:
    raw = _stored(
        market={
            "tier": "interruptible",
            "bid_micros": 1_500_000,
            "max_price_micros": 2_000_000,
            "region": "eu-west",
            "min_reliability_ppm": 990_000,
            "prefer": "greenest",
            "max_carbon_g_per_kwh": 300,
            "verified": True,
        },
        network=True,
    )
    spec = FunctionCreate.model_validate(raw)
    terms = MarketTerms.of(spec.market, network=bool(spec.network))
    assert terms == MarketTerms(
        tier=Tier.INTERRUPTIBLE,
        bid=1_500_000,
        max_price=2_000_000,
        region="eu-west",
        min_reliability_ppm=990_000,
        prefer=Prefer.GREENEST,
        max_carbon_g_per_kwh=300,
        verified=True,
        network=True,
    )


def test_a_stored_spec_reads_back_with_its_defaults() -> None:
    spec = FunctionCreate.model_validate(_stored(resources={"cpu": 2.0, "memory_mib": 1024}))
    assert (spec.resources.cpu, spec.resources.memory_mib, spec.resources.gpus) == (2.0, 1024, [])
    assert (spec.min_containers, spec.buffer_containers, spec.max_inputs) == (0, 0, 1)
    assert MarketTerms.of(spec.market) == MarketTerms()
