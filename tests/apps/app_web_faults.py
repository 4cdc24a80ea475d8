"""Web endpoints whose apps break HTTP or ASGI in small ways, and one that shows what it
was sent (tests/e2e/test_web_small_faults_e2e.py deploys this app)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import crucible

app = crucible.App("webfaults")

Message = dict[str, Any]


async def _answer(send: Any, status: Any, body: bytes, headers: list[Any] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def _http(scope: Message, receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/nosend":  # returns without a response
        return
    if path == "/bodyfirst":  # a body with no start before it
        await send({"type": "http.response.body", "body": b"no start"})
        return
    if path == "/status":
        await _answer(send, 700, b"seven hundred")
        return
    if path == "/crlf":
        await _answer(send, 200, b"x", [(b"x-bad", b"a\r\nset-cookie: crucible_session=pwned")])
        return
    if path == "/slow":  # runs past its function's timeout
        await asyncio.sleep(30)
        await _answer(send, 200, b"too late")
        return
    if path == "/seen":  # the request's headers as the app got them
        seen = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        await _answer(send, 200, json.dumps(seen).encode(), [(b"content-type", b"text/json")])
        return
    await _answer(send, 404, b"no such route")


async def _websocket(scope: Message, receive: Any, send: Any) -> None:
    """Accepts with ``graphql-ws`` when offered, says what was offered, and closes with a
    code and a reason when the client says ``bye``; prints why a client that left did."""
    await receive()  # websocket.connect
    offered = list(scope.get("subprotocols", []))
    chosen = "graphql-ws" if "graphql-ws" in offered else None
    await send({"type": "websocket.accept", "subprotocol": chosen})
    await send({"type": "websocket.send", "text": json.dumps(offered)})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":  # the owner reads why in the logs
            print(f"client left: {message.get('code')} {message.get('reason', '')!r}")
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 4001, "reason": "done here"})
            return


async def _raw(scope: Message, receive: Any, send: Any) -> None:
    """A raw ASGI app (no framework to mend what it does wrong)."""
    if scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send)


@app.function()
@crucible.asgi_app(public=True)
def raw():  # type: ignore[no-untyped-def]
    return _raw


@app.function()
@crucible.asgi_app(public=True)
def spare():  # type: ignore[no-untyped-def]
    """The same app in containers of its own (a first request to it is a cold call)."""
    return _raw


@app.function(timeout=2)
@crucible.asgi_app(public=True)
def hurried():  # type: ignore[no-untyped-def]
    """The same app with a 2 s timeout (its /slow runs past it)."""
    return _raw
