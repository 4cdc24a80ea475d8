"""Web endpoints inside the worker: build the function's ASGI app once, and run each HTTP
request through it, yielding the response as JSON-able parts for the gateway:
``{"status", "headers"}`` first, then ``{"body": base64, "more": bool}`` chunks as the app
sends them (a streaming response streams)."""

from __future__ import annotations

import asyncio
import base64
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["build_asgi_app", "http_parts"]

ASGIApp = Callable[..., Any]


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


def http_parts(app: ASGIApp, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run one request through ``app`` (in a thread with its own event loop) and yield the
    response's parts as they come."""
    parts: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
    body = base64.b64decode(request.get("body", ""))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request["method"],
        "scheme": "http",
        "path": request["path"],
        "raw_path": request["path"].encode(),
        "query_string": request.get("query", "").encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.get("headers", [])],
        "client": ("127.0.0.1", 0),
        "server": ("crucible", 80),
    }
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects mid-request here
        return {"type": "http.disconnect"}

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

    def run() -> None:
        try:
            asyncio.run(app(scope, receive, send))
            parts.put(None)
        except BaseException as exc:  # reported as the call's error
            parts.put(exc)

    threading.Thread(target=run, name="crucible-http", daemon=True).start()
    while True:
        part = parts.get()
        if part is None:
            return
        if isinstance(part, BaseException):
            raise part
        yield part
