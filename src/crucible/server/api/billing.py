"""Bills."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.protocol.billing import BillReport
from crucible.protocol.common import MAX_WIRE_INT
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
    since_ms: int | None = Query(default=None, ge=0, le=MAX_WIRE_INT),
    until_ms: int | None = Query(default=None, ge=0, le=MAX_WIRE_INT),
) -> BillReport:
    period = Period.of(since_ms, until_ms)
    with state.engine.connect() as conn:
        report = bill(conn, who, app_id, period)
        if app_id is None:
            report.tokens = token_bill(conn, who, period)  # model requests billed per token
            report.reservations_micros = reservation_spend(conn, who.account_id, period)
        return report
