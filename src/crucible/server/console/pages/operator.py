"""The operator's page (admin tokens only): key metrics, the fleet, accounts and tokens."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from crucible.errors import PermissionDeniedError
from crucible.server.console.pages.hosts import extras
from crucible.server.console.web import ConsoleRoute, Session, page, state_of
from crucible.server.services import accounts, hosts, offers

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@router.get("/admin")
def operator_page(request: Request, session: Session) -> Response:
    who = session.principal
    if not who.is_admin:
        raise PermissionDeniedError("the operator's page needs an admin token")
    state = state_of(request)
    with state.engine.connect() as conn:
        figures = state.metrics.summary(conn)
        fleet = hosts.list_hosts(conn)
        market = {m.host_id: m for m in offers.list_host_market(conn, state.settings)}
        account_list = accounts.list_accounts(conn, who)
        token_list = accounts.list_all_tokens(conn, who)
    names = {a.id: a.name for a in account_list}
    return page(
        request,
        "operator.html",
        title="Operator",
        figures=figures,
        fleet=[(h, market.get(h.id), extras(h)) for h in fleet],
        accounts=account_list,
        tokens=token_list,
        names=names,
        now_ms=state.clock.now_ms(),
    )
