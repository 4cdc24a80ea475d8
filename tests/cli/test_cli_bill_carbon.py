"""`crucible bill --by carbon`: the bill's lines summed per app, most emissions first."""

from __future__ import annotations

from crucible.cli.resources import _apps_by_carbon
from crucible.protocol.billing import BillLine, BillReport


def _line(app: str, fn: str, carbon: int, cost: int, energy: int = 1) -> BillLine:
    return BillLine(
        app_id=f"ap-{app}",
        app_name=app,
        function_id=f"fn-{app}-{fn}",
        function_name=fn,
        containers=1,
        container_ms=1000,
        cost_micros=cost,
        calls=1,
        exec_ms=10,
        energy_mwh=energy,
        carbon_mg=carbon,
    )


def test_apps_are_ranked_by_emissions_summed_over_their_functions() -> None:
    report = BillReport(
        account_id="ac-1",
        lines=[
            _line("small", "f", 300, 10),
            _line("big", "train", 500, 90),
            _line("big", "eval", 400, 5),
            _line("tie-a", "f", 300, 50),
            _line("idle", "f", 0, 0, energy=0),
        ],
        total_micros=155,
    )
    ranked = _apps_by_carbon(report)
    assert [a["app_name"] for a in ranked] == ["big", "tie-a", "small", "idle"]
    assert ranked[0] == {
        "app_id": "ap-big",
        "app_name": "big",
        "carbon_mg": 900,
        "energy_mwh": 2,
        "cost_micros": 95,
    }
