"""The builder's apps: the overview (apps, deployments, credit), one app's functions live
(containers, calls/s, errors), and its logs following live."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from crucible.protocol.common import MAX_WIRE_INT, wire_count
from crucible.server.api.web_origin import endpoint_url
from crucible.server.auth import Principal
from crucible.server.billing.statements import credit_info
from crucible.server.console.format import visible, when
from crucible.server.console.live import (
    MAX_STREAM_S,
    event,
    session_alive,
    sse_response,
    table_stream,
)
from crucible.server.console.web import ConsoleRoute, Session, page, render_fragment, state_of
from crucible.server.services import activity, apps, deployments, logs
from crucible.server.services.function_specs import SPECS
from crucible.server.state import ServerState
from crucible.server.store.tables import functions
from crucible.server.wakeups import long_poll

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

ACTIVITY_WINDOW_MS = 3_600_000  # the app page counts calls of the last hour
LOG_TAIL = 200  # lines shown when a log page opens; newer ones follow live


@router.get("/")
def overview(request: Request, session: Session) -> Response:
    state = state_of(request)
    who = session.principal
    with state.engine.connect() as conn:
        app_list = apps.list_apps(conn, who)
        deps = deployments.list_deployments(conn, who)
        credit = credit_info(
            conn, who.account_id, state.clock.now_ms(), required=state.settings.require_credits
        )
    return page(request, "apps.html", title="Apps", apps=app_list, deployments=deps, credit=credit)


def _activity(state: ServerState, who: Principal, app_id: str) -> dict[str, Any]:
    now = state.clock.now_ms()
    with state.engine.connect() as conn:
        rows = activity.app_activity(conn, who, app_id, now - ACTIVITY_WINDOW_MS)
    rates = {
        r.function_id: (
            state.observations.arrivals[r.function_id].per_s(now)
            if r.function_id in state.observations.arrivals
            else 0.0
        )
        for r in rows
    }
    return {"functions": rows, "rates": rates, "app_id": app_id}


@router.get("/apps/{app_id}")
def app_page(app_id: str, request: Request, session: Session) -> Response:
    state = state_of(request)
    who = session.principal
    with state.engine.connect() as conn:
        info = apps.get_app(conn, who, app_id)
        rows = conn.execute(
            select(functions.c.id, functions.c.name, functions.c.app_id, functions.c.spec_rev)
            .where(functions.c.app_id == app_id, functions.c.account_id == who.account_id)
            .order_by(functions.c.name)
        ).all()
        specs = SPECS.get_many(conn, {fn.id: fn.spec_rev for fn in rows})
        endpoints = [
            (fn.name, endpoint_url(state, request, conn, who.account_id, fn))
            for fn in rows
            if fn.id in specs and specs[fn.id].spec.web
        ]
    return page(
        request,
        "app.html",
        title=f"App {info.name}",
        app=info,
        web_endpoints=[(name, url) for name, url in endpoints if url],
        **_activity(state, who, app_id),
    )


@router.get("/apps/{app_id}/stream")
async def app_stream(app_id: str, request: Request, session: Session) -> Response:
    state = state_of(request)
    who = session.principal
    _activity(state, who, app_id)  # NotFound before the stream starts

    def render() -> str:
        return render_fragment("_activity_rows.html", **_activity(state, who, app_id))

    return sse_response(table_stream(request, render))


@router.get("/apps/{app_id}/logs")
def logs_page(
    app_id: str,
    request: Request,
    session: Session,
    call_id: str | None = Query(default=None, max_length=64),
) -> Response:
    state = state_of(request)
    who = session.principal
    with state.engine.connect() as conn:
        info = apps.get_app(conn, who, app_id)
        after = logs.tail_after(conn, who, app_id, LOG_TAIL, call_id)
        found = logs.read_logs(conn, who, app_id, call_id=call_id, after=after, limit=LOG_TAIL)
    stream = f"/apps/{app_id}/logs/stream?after={found.next_after}"
    if call_id:
        stream += f"&call_id={call_id}"
    return page(
        request,
        "logs.html",
        title=f"Logs of {info.name}",
        app=info,
        lines=found.lines,
        call_id=call_id,
        stream=stream,
    )


@router.get("/apps/{app_id}/logs/stream")
async def logs_stream(
    app_id: str,
    request: Request,
    session: Session,
    after: int = Query(default=0, ge=0, le=MAX_WIRE_INT),
    call_id: str | None = Query(default=None, max_length=64),
) -> Response:
    """New log lines as ``line`` events (JSON: ts, stream, line, call_id), each with its id
    so a reconnecting browser resumes after the last one it got."""
    state = state_of(request)
    who = session.principal
    resume = wire_count(request.headers.get("last-event-id", ""))
    if resume is not None:
        after = max(after, resume)
    with state.engine.connect() as conn:
        logs.read_logs(conn, who, app_id, call_id=call_id, after=after, limit=1)  # NotFound now

    async def lines() -> AsyncIterator[str]:
        cursor = after
        started = time.monotonic()
        yield "retry: 1000\n\n"
        while time.monotonic() - started < MAX_STREAM_S:

            def read(after: int = cursor) -> Any:
                with state.engine.connect() as conn:
                    found = logs.read_logs(
                        conn, who, app_id, call_id=call_id, after=after, limit=500
                    )
                return found if found.lines else None

            found = read() or await long_poll(state.wakeups, [f"logs:{app_id}"], read, 15.0)
            if await request.is_disconnected():
                return
            if not session_alive(request):  # signed out, or the token was revoked
                yield event("signed out", "end")
                return
            if found is None:
                yield ": keep-alive\n\n"
                continue
            for line in found.lines:
                data = {
                    "ts": when(line.ts_ms),
                    "stream": line.stream,
                    "line": visible(line.line),
                    "call_id": line.call_id,
                }
                yield event(orjson.dumps(data).decode(), "line", line.id)
            cursor = found.next_after

    return sse_response(lines())
