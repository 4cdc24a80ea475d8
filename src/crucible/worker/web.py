"""Web endpoints inside the worker: build the function's ASGI app once, and run each HTTP
request through it, yielding the response as JSON-able parts for the gateway:
``{"status", "headers"}`` first, then ``{"body": base64, "more": bool}`` chunks as the app
sends them (a streaming response streams)."""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

__all__ = [
    "BODY_BEFORE_START",
    "NO_RESPONSE",
    "app_loop",
    "build_asgi_app",
    "http_parts",
    "http_scope",
    "report",
    "ws_parts",
]

ASGIApp = Callable[..., Any]

# What the owner reads in the app's logs when its app did not answer a request as ASGI
# says (the client gets the gateway's 502 bad_gateway).
NO_RESPONSE = (
    "the web app returned without sending a response ('http.response.start'); the client "
    "was answered 502 bad_gateway: send a response on every path, e.g. a 404 for a route "
    "the app does not serve"
)
BODY_BEFORE_START = (
    "the web app sent 'http.response.body' before 'http.response.start'; the client was "
    "answered 502 bad_gateway: send the response's start (status, headers) first"
)


def report(message: str) -> None:
    """Write ``message`` to the app's logs (under the request being handled)."""
    print(f"bad_gateway: {message}", file=sys.stderr, flush=True)


def build_asgi_app(fn: Callable[..., Any], web: dict[str, Any]) -> ASGIApp:
    if web.get("kind") == "asgi_app":
        app: ASGIApp = fn()
        if not callable(app):
            raise TypeError(
                f"an @crucible.asgi_app() function must return an ASGI app, got {app!r}"
            )
        return app
    from fastapi import FastAPI

    api = FastAPI()
    api.add_api_route("/", fn, methods=[str(web.get("method", "GET"))])
    return api


class _AppLoop:
    """One event loop per container, in its own thread, for the endpoint's app: requests
    run on it concurrently, and what the app keeps between requests (clients, pools bound
    to a loop) stays valid."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = _new_loop()
                threading.Thread(
                    target=_serve, args=(loop,), name="crucible-asgi", daemon=True
                ).start()
                cls._loop = loop
            return cls._loop


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (as ``uvicorn`` would run the app), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """Run ``loop`` for good, under one root task that never ends (not ``run_forever``).

    AnyIO, which runs a FastAPI app's plain ``def`` routes in worker threads, ties each of
    its threads to the loop's root task, found as the task ``run_until_complete`` waits on;
    without one it takes the request's own task and stops the thread when the request ends,
    so every request to a plain ``def`` route started a thread of its own."""
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_forever())


async def _forever() -> None:
    await asyncio.Event().wait()


def app_loop() -> asyncio.AbstractEventLoop:
    """The container's event loop for its web app (started on first use)."""
    return _AppLoop.get()


def http_scope(request: dict[str, Any]) -> dict[str, Any]:
    """The ASGI scope of a gateway request (method, path, query, headers)."""
    return {"type": "http", "method": request["method"], "scheme": "http", **_scope(request)}


def _scope(request: dict[str, Any]) -> dict[str, Any]:
    """What an HTTP and a WebSocket scope share: the path, query and headers the gateway
    passed (a WebSocket request has no method)."""
    return {
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "path": request["path"],
        # The bytes the client sent: the gateway passes them as Latin-1 text (HTTP's own).
        "raw_path": request["raw_path"].encode("latin-1", "replace")
        if request.get("raw_path")
        else request["path"].encode(),
        "query_string": request.get("query", "").encode("latin-1", "replace"),
        "root_path": "",
        "headers": [
            (k.lower().encode("latin-1", "replace"), v.encode("latin-1", "replace"))
            for k, v in request.get("headers", [])
        ],
        "client": ("127.0.0.1", 0),
        "server": ("crucible", 80),
    }


def body_once(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive`` for a request whose whole body came at once: the body, then
    nothing (the gateway does not tell a worker of a client that left mid-request)."""
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


def _run_app(
    app: ASGIApp,
    scope: dict[str, Any],
    receive: Callable[[], Any],
    send: Callable[[dict[str, Any]], Any],
    parts: queue.Queue[dict[str, Any] | BaseException | None],
) -> Iterator[dict[str, Any]]:
    """Run ``app`` on the container's app loop; yield what ``send`` puts in ``parts``
    until the app returns (or raise what it raised)."""

    async def run() -> None:
        try:
            await app(scope, receive, send)
            parts.put(None)
        except BaseException as exc:  # reported as the call's error
            parts.put(exc)

    asyncio.run_coroutine_threadsafe(run(), _AppLoop.get())
    while True:
        part = parts.get()
        if part is None:
            return
        if isinstance(part, BaseException):
            raise part
        yield part


def http_parts(app: ASGIApp, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run one request through ``app`` (in a thread with its own event loop) and yield the
    response's parts as they come. An app that sends no start, or a body before it, is
    reported in its logs (the gateway answers 502 for it)."""
    parts: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
    body = base64.b64decode(request.get("body", ""))
    scope = http_scope(request)
    receive = body_once(body)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            parts.put(
                {
                    "status": int(message["status"]),
                    "headers": [
                        [k.decode("latin-1"), v.decode("latin-1")]
                        for k, v in message.get("headers", [])
                    ],
                }
            )
        elif message["type"] == "http.response.body":
            parts.put(
                {
                    "body": base64.b64encode(message.get("body", b"")).decode("ascii"),
                    "more": bool(message.get("more_body", False)),
                }
            )

    started = False
    for part in _run_app(app, scope, receive, send, parts):
        if not started and "status" not in part:
            report(BODY_BEFORE_START)
        started = True
        yield part
    if not started:
        report(NO_RESPONSE)


def ws_parts(
    app: ASGIApp, request: dict[str, Any], inbox: Callable[[int], list[str]]
) -> Iterator[dict[str, Any]]:
    """Run a WebSocket connection through ``app``: the client's messages come from
    ``inbox(after)`` (the gateway stores them), what the app sends is yielded as parts:
    ``{"ws": "accept", "subprotocol"}``, ``{"ws": "send", "text"|"bytes"}``,
    ``{"ws": "close", "code", "reason"}``. The scope's ``subprotocols`` are those the client
    offered."""
    parts: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
    offered = [str(p) for p in request.get("subprotocols") or []]
    scope = {"type": "websocket", "scheme": "ws", "subprotocols": offered, **_scope(request)}
    pending: list[dict[str, Any]] = [{"type": "connect"}]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        while not pending:
            got = await asyncio.to_thread(inbox, read)
            read += len(got)
            pending.extend(json.loads(m) for m in got)
        m = pending.pop(0)
        if m["type"] == "connect":
            return {"type": "websocket.connect"}
        if m["type"] == "disconnect":
            code = int(m.get("code", 1000))
            return {"type": "websocket.disconnect", "code": code, "reason": m.get("reason", "")}
        if "bytes" in m:
            return {"type": "websocket.receive", "bytes": base64.b64decode(m["bytes"])}
        return {"type": "websocket.receive", "text": m.get("text", "")}

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            parts.put({"ws": "accept", "subprotocol": message.get("subprotocol")})
        elif kind == "websocket.send":
            if message.get("bytes") is not None:
                data = base64.b64encode(message["bytes"]).decode("ascii")
                parts.put({"ws": "send", "bytes": data})
            else:
                parts.put({"ws": "send", "text": message.get("text", "")})
        elif kind == "websocket.close":
            code = int(message.get("code", 1000))
            parts.put({"ws": "close", "code": code, "reason": str(message.get("reason") or "")})

    yield from _run_app(app, scope, receive, send, parts)
