"""Bills: metered cost per app, function and call."""

from __future__ import annotations

from crucible.protocol.common import Wire, WireInt

__all__ = ["BillLine", "BillReport"]


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


class BillReport(Wire):
    account_id: str
    lines: list[BillLine]
    total_micros: WireInt
    total_energy_mwh: WireInt = 0
    total_carbon_mg: WireInt = 0
