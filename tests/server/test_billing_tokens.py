"""The per-token pricing core: exact running-total rounding (callers pay floor(total value)
however the tokens are split into requests), balanced postings, and prices as typed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible.core.ledger import PLATFORM_FEES, renter_account
from crucible.core.token_pricing import (
    UNITS_PER_MICRO,
    TokenPrices,
    TokenUsage,
    parse_price_per_million,
    token_charge_micros,
    token_postings,
)
from crucible.errors import InvalidRequestError


@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=50),
    st.integers(0, 3_000_000),
    st.integers(0, 3_000_000),
)
def test_a_split_never_changes_the_total(
    requests: list[tuple[int, int]], price_in: int, price_out: int
) -> None:
    prices = TokenPrices(price_in, price_out)
    running = 0
    charged = 0
    for i, o in requests:
        value = TokenUsage(i, o).value_units(prices)
        charged += token_charge_micros(running, value)
        running += value
    total_in = sum(i for i, _ in requests)
    total_out = sum(o for _, o in requests)
    assert charged == (total_in * price_in + total_out * price_out) // UNITS_PER_MICRO


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 1_000_000))
def test_postings_balance_and_pay_the_owner_less_the_fee(
    cost: int, before: int, fee_ppm: int
) -> None:
    postings = token_postings("bob", "alice", cost, before, fee_ppm)
    assert sum(p.amount for p in postings) == 0
    paid = {p.account: p.amount for p in postings}
    assert paid.get(renter_account("bob"), 0) == -cost
    assert paid.get(renter_account("alice"), 0) + paid.get(PLATFORM_FEES, 0) == cost


def test_prices_as_typed() -> None:
    assert parse_price_per_million("--price-input", 0.10) == 100_000
    assert parse_price_per_million("--price-input", None) is None
    assert parse_price_per_million("--price-output", 0) == 0
    for bad in (-0.01, float("nan"), float("inf"), 5000.0):
        with pytest.raises(InvalidRequestError, match="--price-output"):
            parse_price_per_million("--price-output", bad)
    assert not TokenPrices(0, 0).priced and TokenPrices(0, 1).priced
    with pytest.raises(ValueError):
        token_charge_micros(-1, 5)
