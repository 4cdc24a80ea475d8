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


class BillReport(Wire):
    account_id: str
    lines: list[BillLine]
    total_micros: WireInt
