"""Server-sent events for the console's live views: log lines as they arrive, and tables
re-rendered when what they show changes.

A stream re-checks its session every few seconds (signing out or revoking the token ends
it) and closes after :data:`MAX_STREAM_S`; the browser's EventSource reconnects by itself,
and log streams resume after the last line sent (``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from crucible.server.console.web import COOKIE, state_of
from crucible.server.services.sessions import read_session

__all__ = ["MAX_STREAM_S", "event", "session_alive", "sse_response", "table_stream"]

MAX_STREAM_S = 300.0  # then the browser reconnects (and a dead session is noticed there)
TABLE_REFRESH_S = 1.0
KEEPALIVE_S = 15.0
_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def event(data: str, name: str | None = None, event_id: int | None = None) -> str:
    """One SSE event; multi-line data becomes one ``data:`` field per line. Every line end
    SSE knows (CRLF, a lone CR, LF) is split on: a CR left in the data (from a message a
    stranger chose) would end the field there and start fields of its own."""
    head = ""
    if event_id is not None:
        head += f"id: {event_id}\n"
    if name:
        head += f"event: {name}\n"
    body = "".join(f"data: {line}\n" for line in _LINE_ENDS.split(data))
    return head + body + "\n"


def session_alive(request: Request) -> bool:
    state = state_of(request)
    with state.engine.connect() as conn:
        return read_session(conn, request.cookies.get(COOKIE), state.clock.now_ms()) is not None


def sse_response(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def table_stream(request: Request, render: Callable[[], str]) -> AsyncIterator[str]:
    """Send ``render()``'s markup as an ``html`` event whenever it changes (polled every
    second: one indexed page query per open view)."""
    started = time.monotonic()
    last = None
    checked = started
    yield "retry: 2000\n\n"
    while time.monotonic() - started < MAX_STREAM_S:
        if await request.is_disconnected():
            return
        now = time.monotonic()
        if now - checked > 5:
            if not session_alive(request):
                yield event("signed out", "end")
                return
            checked = now
        html = await run_in_threadpool(render)  # store reads off the event loop
        if html != last:
            yield event(html, "html")
            last = html
        await asyncio.sleep(TABLE_REFRESH_S)
