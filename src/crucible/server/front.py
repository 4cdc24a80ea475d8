"""The control plane's ASGI app: FastAPI, with the web gateway's HTTP requests
(``/web/...``, every request to a web endpoint) served before FastAPI's own middleware.

FastAPI wraps every request in its error, telemetry and body-limit middleware before the
app's own (server/hotpath.py among them); for the gateway, whose route is called directly
anyway, those layers only wrap ``send`` and cost a fifth of the server's own work on a
plain request. :class:`FrontedAPI` hands such a request to :meth:`HotPath.web` first: the
same body limit, route function and error shape (every error leaves as the one JSON error,
never a 500 page). Everything else, WebSockets included, goes through FastAPI unchanged.
With a ports domain set (api/ports_host.py, which must see every request first), nothing
is taken early.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from crucible.server.hotpath import HotPath

__all__ = ["FrontedAPI"]


class FrontedAPI(FastAPI):
    """FastAPI, with :attr:`front` (when set) taking the web gateway's requests first."""

    front: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is not None and scope["type"] == "http" and scope["path"][:5] == "/web/":
            scope["app"] = self  # as FastAPI sets it: the route reads the server's state there
            if await front.web(scope, receive, send):
                return
        await super().__call__(scope, receive, send)
