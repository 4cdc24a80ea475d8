"""Calls: a filtered, paginated list (newest first, live on its first page) and one call's
timeline (queued, scheduled, starting, running: when, and what each phase cost)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from crucible.errors import InvalidRequestError
from crucible.protocol.common import wire_count
from crucible.server.auth import Principal
from crucible.server.console.charts import timeline_bar
from crucible.server.console.live import sse_response, table_stream
from crucible.server.console.web import ConsoleRoute, Session, page, render_fragment, state_of
from crucible.server.services import apps
from crucible.server.services import calls as calls_svc
from crucible.server.services.timeline import call_timeline
from crucible.server.state import ServerState

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

CALL_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
PAGE = 50


def _before(text: str | None) -> tuple[int, str] | None:
    if not text:
        return None
    ms_text, _, call_id = text.partition(":")
    ms = wire_count(ms_text)
    if ms is None or not call_id or len(call_id) > 64:
        raise InvalidRequestError(
            "before must be <created_ms>:<call id>, as in the list's 'Older' link"
        )
    return ms, call_id


def _filters(app_id: str | None, function_id: str | None, state: str | None) -> dict[str, str]:
    if state and state not in CALL_STATES:
        raise InvalidRequestError(f"state must be one of {', '.join(CALL_STATES)}")
    found = {"app_id": app_id, "function_id": function_id, "state": state}
    return {k: v for k, v in found.items() if v}


def _rows(
    state: ServerState, who: Principal, filters: dict[str, str], before: tuple[int, str] | None
) -> dict[str, Any]:
    with state.engine.connect() as conn:
        found = calls_svc.list_calls_by_range(
            conn,
            who,
            app_id=filters.get("app_id"),
            function_id=filters.get("function_id"),
            state=filters.get("state"),
            limit=PAGE + 1,
            before=before,
        )
        names = apps.function_names(conn, who, {c.function_id for c in found})
    more = len(found) > PAGE
    found = found[:PAGE]
    older = None
    if more:
        last = found[-1]
        older = "/calls?" + urlencode({**filters, "before": f"{last.created_ms}:{last.id}"})
    return {"calls": found, "older": older, "names": names}


@router.get("/calls")
def calls_page(
    request: Request,
    session: Session,
    app_id: str | None = Query(default=None, max_length=64),
    function_id: str | None = Query(default=None, max_length=64),
    state: str | None = Query(default=None, max_length=64),
    before: str | None = Query(default=None, max_length=100),
) -> Response:
    st = state_of(request)
    filters = _filters(app_id, function_id, state)
    with st.engine.connect() as conn:
        app_list = apps.list_apps(conn, session.principal)
    live = None
    if before is None:  # the newest page follows new calls; older pages stay put
        live = "/calls/stream?" + urlencode(filters)
    return page(
        request,
        "calls.html",
        title="Calls",
        apps=app_list,
        filters=filters,
        states=CALL_STATES,
        live=live,
        paged=before is not None,
        **_rows(st, session.principal, filters, _before(before)),
    )


@router.get("/calls/stream")
async def calls_stream(
    request: Request,
    session: Session,
    app_id: str | None = Query(default=None, max_length=64),
    function_id: str | None = Query(default=None, max_length=64),
    state: str | None = Query(default=None, max_length=64),
) -> Response:
    st = state_of(request)
    filters = _filters(app_id, function_id, state)
    who = session.principal

    def render() -> str:
        return render_fragment("_call_rows.html", **_rows(st, who, filters, None))

    return sse_response(table_stream(request, render))


@router.get("/calls/{call_id}")
def call_page(call_id: str, request: Request, session: Session) -> Response:
    st = state_of(request)
    with st.engine.connect() as conn:
        info = calls_svc.get_call(conn, session.principal, call_id)
        timeline = call_timeline(conn, session.principal, call_id, st.clock.now_ms())
    return page(
        request,
        "call.html",
        title=f"Call {call_id}",
        call=info,
        timeline=timeline,
        chart=timeline_bar(timeline.phases),
    )
