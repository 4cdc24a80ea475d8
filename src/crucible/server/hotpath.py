"""The hot path: the routes every call and every host agent cross, served without the
framework's per-request machinery.

A ``.remote()`` is one ``POST /v1/functions/{id}/calls`` from the SDK and one
``POST /v1/containers/{id}/exchange`` from the worker; a ``.map()`` adds
``POST /v1/groups/{id}/results``; every host agent sends ``POST /v1/hosts/{id}/sync`` once
a second. Routing, dependency injection and the response-model round trip cost about as much
server time as the work itself, so this ASGI middleware answers those routes directly: it
reads the body (within the same size limit), authenticates with the same dependency,
validates with the same wire model, and calls the very route functions FastAPI would call.
The web gateway's HTTP route (every request to a web endpoint, ``/web/...``) is called here
the same way, after the same body limit. Everything else, and the OpenAPI description of
these routes, stays with FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crucible.errors import PayloadTooLargeError
from crucible.protocol.calls import CallsCreate, GroupResultsRequest
from crucible.protocol.containers import Exchange
from crucible.protocol.hosts import HostSync
from crucible.server.api import calls, containers, deps, gateway, hosts
from crucible.server.api.openai_errors import openai_too_large
from crucible.server.api.responses import response_for_exception
from crucible.server.auth import Principal
from crucible.server.state import ServerState

__all__ = ["HotPath"]

Handler = Callable[[str, Any, Principal, ServerState], Awaitable[Response]]
Auth = Callable[[Request], Awaitable[Principal]]

_ROUTES: list[tuple[re.Pattern[str], type[BaseModel], Auth, Handler]] = [
    (
        re.compile(r"^/v1/functions/([^/]+)/calls$"),
        CallsCreate,
        deps.call_maker,
        calls.create_calls,  # type: ignore[list-item]
    ),
    (
        re.compile(r"^/v1/groups/([^/]+)/results$"),
        GroupResultsRequest,
        deps.call_maker,
        calls.group_results,  # type: ignore[list-item]
    ),
    (
        re.compile(r"^/v1/containers/([^/]+)/exchange$"),
        Exchange,
        deps.container,
        containers.exchange,  # type: ignore[list-item]
    ),
    # Every host agent's heartbeat and command channel: once a second per host.
    (
        re.compile(r"^/v1/hosts/([^/]+)/sync$"),
        HostSync,
        deps.host_agent,
        hosts.sync,  # type: ignore[list-item]
    ),
]


# The web gateway's HTTP route (api/gateway.py): every request to a web endpoint.
_WEB = re.compile(r"^/web/([^/]+)/([^/]+)/([^/]+)/(.*)$", re.DOTALL)
_WEB_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


class HotPath:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.limit = state.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self.web(scope, receive, send):
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for pattern, model, auth, handler in _ROUTES:
                match = pattern.match(path)
                if match is not None:
                    response = await self._serve(scope, receive, match[1], model, auth, handler)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def web(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve ``scope`` if it is an HTTP request to a web endpoint (``/web/...``);
        False, having done nothing, when it is not one."""
        if scope["type"] != "http" or not scope["path"].startswith("/web/"):
            return False
        web = _WEB.match(scope["path"])
        if web is None or scope["method"] not in _WEB_METHODS:
            return False
        response = await self._web(scope, receive, web)
        await response(scope, receive, send)
        return True

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        object_id: str,
        model: type[BaseModel],
        auth: Auth,
        handler: Handler,
    ) -> Response:
        try:
            body = await self._body(receive)
            request = Request(scope, receive)
            principal = await auth(request)
            req = model.model_validate_json(body or b"{}")
            return await handler(object_id, req, principal, self.state)
        except Exception as exc:  # every error leaves in the one error shape
            return response_for_exception(exc)

    async def _web(self, scope: Scope, receive: Receive, match: re.Match[str]) -> Response:
        """A request to a web endpoint: the gateway's route function, called directly."""
        try:
            request = await self.request(scope, receive, web=True)
            account, deployment, function, path = match.groups()
            return await gateway.gateway(account, deployment, function, path, request)
        except Exception as exc:  # every error leaves in the one error shape
            return response_for_exception(exc)

    async def request(self, scope: Scope, receive: Receive, *, web: bool = False) -> Request:
        """The request, its body read first (within the size limit; ``web``: a web
        endpoint's, whose 413 says so), for a route function that takes a ``Request``: it
        reads the body from memory, then what the client does next (a disconnect)."""
        body = await self._body(receive, web=web, openai=scope["path"].startswith("/openai/"))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return Request(scope, replay)

    async def _body(self, receive: Receive, *, web: bool = False, openai: bool = False) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise PayloadTooLargeError(self._too_large(web, openai))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, web: bool, openai: bool = False) -> str:
        """The 413's message: the JSON API's advice is for its own requests only, and a model
        request's limit is the OpenAI API's own (the smaller)."""
        if openai:
            return openai_too_large(self.state.settings.openai_max_request_bytes)
        if web:
            return (
                f"request body is over the {self.limit:,}-byte limit of a web endpoint's "
                "request; send a smaller body"
            )
        return (
            f"request body is over the {self.limit}-byte limit; send fewer inputs per request "
            "or pass large values as blobs"
        )
