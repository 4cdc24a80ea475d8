"""The bill: cost per function, spend over time (a chart), credit, statements (per app and
ledger entries, paged; CSV downloads)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse

from crucible.protocol.common import MAX_WIRE_INT
from crucible.server.billing import statements
from crucible.server.billing.service import bill
from crucible.server.console import charts
from crucible.server.console.format import usd, when
from crucible.server.console.web import (
    ConsoleRoute,
    Session,
    page,
    render_fragment,
    state_of,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

# The chart's ranges: (how far back, one bar per)
RANGES = {
    "hour": (3_600_000, 60_000),
    "day": (86_400_000, 3_600_000),
    "month": (30 * 86_400_000, 86_400_000),
}
ENTRIES_PAGE = 50


@router.get("/bill")
def bill_page(
    request: Request,
    session: Session,
    span: str = Query(default="day", alias="range", pattern="^(hour|day|month)$"),
    before: int | None = Query(default=None, ge=0, le=MAX_WIRE_INT),
) -> Response:
    state = state_of(request)
    who = session.principal
    now = state.clock.now_ms()
    back, bucket = RANGES[span]
    since = (now - back) // bucket * bucket
    with state.engine.connect() as conn:
        credit = statements.credit_info(
            conn, who.account_id, now, required=state.settings.require_credits
        )
        series = dict(statements.spend_series(conn, who.account_id, since, bucket))
        entries = statements.recent_entries(conn, who, ENTRIES_PAGE + 1, before)
    # Every bucket of the range, empty ones too, so time runs evenly along the axis.
    points = [(when(t), series.get(t, 0)) for t in range(since, now + 1, bucket)]
    chart = charts.bars(
        f"Cost per {'minute' if span == 'hour' else 'hour' if span == 'day' else 'day'}",
        points,
        usd,
        first=when(since),
        last="now",
    )
    older = entries[ENTRIES_PAGE - 1]["seq"] if len(entries) > ENTRIES_PAGE else None
    return page(
        request,
        "bill.html",
        title="Bill",
        credit=credit,
        chart=chart,
        range=span,
        ranges=list(RANGES),
        entries=entries[:ENTRIES_PAGE],
        older=older,
    )


@router.get("/bill/summary")
def bill_summary(request: Request, session: Session) -> Response:
    """Cost per function and the statement per app: sums over every call and ledger entry
    of the account, so the bill page loads them after itself (``data-fragment``) rather than
    making the page wait."""
    state = state_of(request)
    with state.engine.connect() as conn:
        report = bill(conn, session.principal)
        per_app = statements.statement(conn, session.principal, "apps")
    return HTMLResponse(render_fragment("_bill_summary.html", bill=report, per_app=per_app))


@router.get("/bill/statement.csv")
def statement_csv(
    request: Request,
    session: Session,
    kind: str = Query(default="apps", pattern="^(entries|apps|calls)$"),
) -> Response:
    """The same statements as ``crucible statement`` (GET /v1/statement?format=csv)."""
    state = state_of(request)
    with state.engine.connect() as conn:
        lines = statements.statement(conn, session.principal, kind)
    return PlainTextResponse(
        statements.to_csv(lines),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="statement-{kind}.csv"'},
    )
