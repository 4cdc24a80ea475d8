"""Bills: metered cost per app, function and call."""

from __future__ import annotations

from crucible.protocol.common import Wire

__all__ = ["BillLine", "BillReport"]


class BillLine(Wire):
    app_id: str
    app_name: str
    function_id: str
    function_name: str
    containers: int
    container_ms: int
    cost_micros: int
    calls: int
    exec_ms: int
    # Energy (milliwatt-hours) and emissions (milligrams of CO2) of the metered container
    # time; ``energy_estimated``: some of it was estimated, not measured.
    energy_mwh: int = 0
    carbon_mg: int = 0
    energy_estimated: bool = False


class BillReport(Wire):
    account_id: str
    lines: list[BillLine]
    total_micros: int
    total_energy_mwh: int = 0
    total_carbon_mg: int = 0
