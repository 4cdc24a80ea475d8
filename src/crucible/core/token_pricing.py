"""Per-token pricing of model requests (the pure core; no I/O, no clock).

A model deployment may price its tokens in micro-dollars per million tokens, separately for
input (prompt) and output (completion) tokens. A request's exact value is
``input_tokens * price_input + output_tokens * price_output`` in *value units* of
10^-6 micro-dollars. Charging each request rounded down would lose up to a micro-dollar a
request (a 20-token request at $0.10 per million tokens is worth 2 micro-dollars exactly, one
at 7 tokens 0.7), so the store keeps each caller's running value and a request is charged
``floor((V + v) / 10^6) - floor(V / 10^6)``: over any number of requests the caller pays
exactly ``floor(total value)``, however the tokens were split.

The charge moves money from the caller (``renter:<caller>``) to the model's owner
(``renter:<owner>``), less the platform fee, rounded on the model's running total with the
ledger's fee rule (:func:`~crucible.core.ledger.fee_share`). Hosts are paid by
the container-time metering of the deployment's containers, as for any function; that time
is charged to the owner.
"""

from __future__ import annotations

from dataclasses import dataclass

from crucible.core.ledger import (
    PLATFORM_FEES,
    Posting,
    fee_share,
    renter_account,
)
from crucible.errors import InvalidRequestError

__all__ = [
    "UNITS_PER_MICRO",
    "TokenPrices",
    "TokenUsage",
    "parse_price_per_million",
    "token_charge_micros",
    "token_postings",
]

UNITS_PER_MICRO = 1_000_000  # value units: tokens x (micro-dollars per million tokens)
_MAX_PRICE_MICROS = 1_000_000_000  # $1,000 per million tokens: beyond that, a typo


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Micro-dollars per million tokens; both zero means "billed by container time only"."""

    input_micros: int
    output_micros: int

    @property
    def priced(self) -> bool:
        return self.input_micros > 0 or self.output_micros > 0


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int

    def value_units(self, prices: TokenPrices) -> int:
        """The exact value of these tokens, in units of 10^-6 micro-dollars."""
        return self.input_tokens * prices.input_micros + self.output_tokens * prices.output_micros


def parse_price_per_million(what: str, dollars: float | None) -> int | None:
    """Dollars per million tokens (as typed: ``0.10``) to micro-dollars per million tokens;
    None stays None. Negative, non-finite or absurd prices are refused, naming the option."""
    if dollars is None:
        return None
    if not dollars == dollars or dollars < 0 or dollars * 1_000_000 > _MAX_PRICE_MICROS:
        raise InvalidRequestError(
            f"{what} must be a price in dollars per million tokens between 0 and 1000 "
            f"(got {dollars!r})"
        )
    return round(dollars * 1_000_000)


def token_charge_micros(value_before_units: int, value_units: int) -> int:
    """What to charge for a request worth ``value_units`` when the caller's running value on
    this meter was ``value_before_units`` (the running-total rounding of the module
    docstring)."""
    if value_before_units < 0 or value_units < 0:
        raise ValueError("token values are never negative")
    after = (value_before_units + value_units) // UNITS_PER_MICRO
    return after - value_before_units // UNITS_PER_MICRO


def token_postings(
    caller: str, owner: str, cost_micros: int, charged_before: int, fee_ppm: int
) -> tuple[Posting, ...]:
    """The postings of a token charge: the caller pays ``cost_micros``, the platform takes
    its fee (rounded on the model's running total ``charged_before``), the owner the rest.
    A caller who is the owner pays only the fee on their own tokens, which is why the shell
    posts nothing for an owner's own requests."""
    fee = fee_share(charged_before, cost_micros, fee_ppm)
    postings = [
        Posting(renter_account(caller), -cost_micros),
        Posting(renter_account(owner), cost_micros - fee),
        Posting(PLATFORM_FEES, fee),
    ]
    return tuple(p for p in postings if p.amount != 0)
