"""The control plane's ASGI app: FastAPI, with the web gateway's HTTP requests
(``/web/...``, every request to a web endpoint) and the OpenAI API's model requests
(``POST /openai/v1/chat/completions``, ``/completions``, ``/embeddings``) served before
FastAPI's own middleware and routing.

FastAPI wraps every request in its error, telemetry and body-limit middleware, then the
app's own (server/hotpath.py among them), then matches the path against every route; for
these routes, which take the bare request, that only wraps ``send`` and costs about a fifth
of the server's own work on a plain request. :class:`FrontedAPI` calls their route
functions directly: the same body limit, the same functions, the same error shapes (the
one JSON error; OpenAI's shape under ``/openai/``; never a 500 page for a client's
mistake). Everything else (other methods on those paths, WebSockets, every other route)
goes through FastAPI unchanged. With a ports domain set (api/ports_host.py, which must see
every request first), nothing is taken early.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from crucible.server.api import openai
from crucible.server.api.openai_errors import to_openai_shape
from crucible.server.api.responses import response_for_exception
from crucible.server.hotpath import HotPath
from crucible.server.shared_origin import (
    guarded_send,
    is_tenant_content,
    refuse_service_worker,
    wants_worker,
)

__all__ = ["FrontedAPI"]

# The OpenAI API's model routes (api/openai.py), by path: each takes the bare request.
_OPENAI: dict[str, Callable[[Request], Awaitable[Response]]] = {
    "/openai/v1/chat/completions": openai.chat_completions,
    "/openai/v1/completions": openai.completions,
    "/openai/v1/embeddings": openai.embeddings,
}


class FrontedAPI(FastAPI):
    """FastAPI, with :attr:`front` (when set) taking the web gateway's requests first."""

    front: HotPath | None = None
    ports_domain: str = ""  # normalised (api/ports_origin.check_domain), or "" when unset

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_tenant_content(scope, self.ports_domain):
            # A tenant's page on the console's origin: sandboxed (server/shared_origin.py).
            if wants_worker(scope):
                await refuse_service_worker(send)
                return
            send = await guarded_send(self.state.crucible, scope, send)
        front = self.front
        if front is not None and scope["type"] == "http":
            path = scope["path"]
            if path[:5] == "/web/":
                scope["app"] = self  # as FastAPI sets it: routes read the server's state there
                if await front.web(scope, receive, send):
                    return
            elif scope["method"] == "POST" and path in _OPENAI:
                scope["app"] = self
                await _openai(front, _OPENAI[path], scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _openai(
    front: HotPath,
    route: Callable[[Request], Awaitable[Response]],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """One OpenAI API request, its errors in OpenAI's shape (as the app's handlers give)."""
    try:
        response = await route(await front.request(scope, receive))
    except Exception as exc:
        response = to_openai_shape(response_for_exception(exc))
    await response(scope, receive, send)
