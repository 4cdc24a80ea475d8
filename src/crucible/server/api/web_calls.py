"""One HTTP request to a deployed web function, made from inside the control plane.

The request goes to a warm container in memory when one waits for work (the gateway's fast
path, server/web_relay.py), and otherwise becomes a call of the function (queued,
autoscaled, metered and logged like any other); the container runs it through the
function's ASGI app and what the app sends comes back as the call's items: first the
response start (status, headers), then body parts as they are produced. The OpenAI API
(``api/openai.py``) forwards through it; the web gateway (``api/gateway.py``) does the same
with its own copy of these steps.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from crucible.errors import NotFoundError
from crucible.protocol.calls import CallsCreate, InputItem
from crucible.server.api.calls import submit_calls
from crucible.server.api.gateway import (
    held_response,
    relay,
    request_input,
    request_payload,
    response_parts,
)
from crucible.server.api.items import read_page
from crucible.server.auth import Principal
from crucible.server.services.apps import FunctionRow, get_function_row
from crucible.server.state import ServerState
from crucible.server.web_relay import Relayed, rest_of

__all__ = ["WebCallResponse", "body_parts", "call_web_function"]

_FIRST_PART_WAIT_S = 300.0  # a cold start may load a model first
_NEXT_PART_WAIT_S = 30.0


@dataclass
class WebCallResponse:
    """The app's answer: ``status`` None when the call ended without one (``state`` and
    ``error_code`` say how). Once ``body`` is read to its end, ``state`` is the call's final
    state: a response cut short by a failed call ends without its rest, and says so there."""

    call_id: str
    status: int | None
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    state: str = "succeeded"
    error_code: str | None = None
    relayed: Relayed | None = None  # a relayed request (no call row): read on with body_parts


async def call_web_function(
    state: ServerState,
    owner: Principal,
    function_id: str,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> WebCallResponse:
    """Submit the request as a call of ``function_id`` on behalf of ``owner`` (the
    function's account) and wait for the response to start."""
    http: dict[str, Any] = {
        "method": method,
        "path": path,
        "query": "",
        "headers": [[k, v] for k, v in headers],
    }
    fn = _function(state, owner, function_id)
    relayed = await relay(state, owner, fn, http, body) if fn is not None else None
    if relayed is not None:
        hdrs = relayed.headers
        answer = WebCallResponse(relayed.call_id, relayed.status, hdrs, relayed.body)
        answer.relayed = relayed.relayed
        if relayed.status is None:
            answer.state, answer.error_code = relayed.state, relayed.error_code
            return answer

        async def relayed_body() -> AsyncIterator[bytes]:
            async for chunk in relayed.body:
                yield chunk
            answer.state, answer.error_code = relayed.state, relayed.error_code

        answer.state = "running" if relayed.whole is None else relayed.state
        answer.body = relayed_body()
        return answer
    args = await request_input(state, owner, request_payload(http, body))
    created = await submit_calls(
        function_id, CallsCreate(inputs=[InputItem(args=args)]), owner, state, on_behalf=True
    )
    call_id = created.call_ids[0]
    page = await read_page(state, owner, call_id, 0, _FIRST_PART_WAIT_S)

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    whole = held_response(page) if page.done and not page.items else None
    if not page.items and whole is None:
        code = page.call.error.code if page.call.error else None
        return WebCallResponse(call_id, None, [], nothing(), page.call.state, code)
    parts = whole if whole is not None else response_parts(page.items)
    start = parts[0]
    hdrs = [(str(k), str(v)) for k, v in start.get("headers", [])]
    answer = WebCallResponse(call_id, int(start["status"]), hdrs, nothing(), "running")

    async def rest() -> AsyncIterator[bytes]:
        nonlocal page
        pending = parts[1:]
        while True:
            for part in pending:
                if "body" in part:
                    yield base64.b64decode(part["body"])
            if page.done:
                answer.state = page.call.state
                answer.error_code = page.call.error.code if page.call.error else None
                return
            page = await read_page(state, owner, call_id, page.next, _NEXT_PART_WAIT_S)
            pending = response_parts(page.items)

    answer.body = rest()
    return answer


def _function(state: ServerState, owner: Principal, function_id: str) -> FunctionRow | None:
    """The owner's function (its typed spec, and its app's state for :func:`relay`)."""
    with state.engine.connect() as conn:
        try:
            return get_function_row(conn, owner, function_id)
        except NotFoundError:
            return None


async def body_parts(
    state: ServerState, owner: Principal, call_id: str, relayed: Relayed | None = None
) -> AsyncIterator[bytes]:
    """A web call's response body from its beginning, read again from the call's items
    (e.g. after the client that was reading it left). For a relayed request (no items
    stored): what is left of it, read on from where its reader stopped."""
    if relayed is not None:
        async for chunk in rest_of(state.web.relay, relayed):
            yield chunk
        return
    after = 0
    while True:
        page = await read_page(state, owner, call_id, after, _NEXT_PART_WAIT_S)
        whole = held_response(page) if page.done and not page.items and after == 0 else None
        for part in whole if whole is not None else response_parts(page.items):
            if "body" in part:
                yield base64.b64decode(part["body"])
        after = page.next
        if page.done:
            return
