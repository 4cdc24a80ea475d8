"""Bills."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.protocol.billing import BillReport
from crucible.server.api.deps import Builder, State
from crucible.server.billing.entries import reservation_spend
from crucible.server.billing.period import Period
from crucible.server.billing.service import bill
from crucible.server.services.models import token_bill

router = APIRouter(prefix="/v1", tags=["billing"])


@router.get("/bill")
async def get_bill(
    who: Builder,
    state: State,
    app_id: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> BillReport:
    period = Period.of(since_ms, until_ms)
    with state.engine.connect() as conn:
        report = bill(conn, who, app_id, period)
        if app_id is None:
            report.tokens = token_bill(conn, who, period)  # model requests billed per token
            report.reservations_micros = reservation_spend(conn, who.account_id, period)
        return report
