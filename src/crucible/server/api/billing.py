"""Bills."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.protocol.billing import BillReport
from crucible.protocol.common import MAX_WIRE_INT
from crucible.server.api.deps import Builder, State
from crucible.server.billing.entries import charged_before, reservation_spend
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
        days = state.settings.retention_meter_days
        if days > 0:
            kept_from = state.clock.now_ms() - int(days * 86_400_000)
            if (since_ms is None or since_ms < kept_from) and charged_before(
                conn, who.account_id, kept_from
            ):
                report.kept_from_ms = kept_from
    return report
