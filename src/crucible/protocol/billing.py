"""Bills: metered cost per app, function and call."""

from __future__ import annotations

from pydantic import Field

from crucible.protocol.common import Wire, WireInt

__all__ = ["BillLine", "BillReport", "TokenBillLine"]


class BillLine(Wire):
    app_id: str
    app_name: str
    function_id: str
    function_name: str
    containers: WireInt
    container_ms: WireInt
    cost_micros: WireInt
    calls: WireInt
    exec_ms: WireInt
    # Energy (milliwatt-hours) and emissions (milligrams of CO2) of the metered container
    # time; ``energy_estimated``: some of it was estimated, not measured.
    energy_mwh: WireInt = 0
    carbon_mg: WireInt = 0
    energy_estimated: bool = False


class TokenBillLine(Wire):
    """One model's tokens in a bill: what this account spent as a caller (``cost_micros``)
    or earned as the owner from other accounts' calls (``earned_micros``)."""

    model: str  # OWNER/NAME
    requests: WireInt
    input_tokens: WireInt
    output_tokens: WireInt
    cost_micros: WireInt = 0
    earned_micros: WireInt = 0


class BillReport(Wire):
    account_id: str
    # The period it covers (None: open at that end).
    since_ms: WireInt | None = None
    until_ms: WireInt | None = None
    lines: list[BillLine]
    total_micros: WireInt
    total_energy_mwh: WireInt = 0
    total_carbon_mg: WireInt = 0
    # Model requests billed per token (docs/inference.md); not in total_micros.
    tokens: list[TokenBillLine] = Field(default_factory=list)
    # Reservations bought (paid up front, used or not); not in total_micros either.
    reservations_micros: WireInt = 0
    # Metered intervals that ended before this were pruned (CRUCIBLE_RETENTION_METER_DAYS),
    # when the period reaches back past it: the bill sums what is kept; statements have all.
    kept_from_ms: WireInt | None = None
