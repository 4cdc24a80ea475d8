"""The control plane's ASGI application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crucible import __version__
from crucible.errors import Error, InvalidRequestError, PayloadTooLargeError
from crucible.server.api import (
    access,
    accounts,
    apps,
    audit,
    billing,
    blobs,
    calls,
    clusters,
    containers,
    deployments,
    dicts,
    fine_tunes,
    gateway,
    health,
    hosts,
    items,
    jobs,
    logs,
    market,
    metrics,
    models,
    openai,
    pods,
    ports,
    ports_ws,
    queues,
    secrets,
    ssh_keys,
    volumes,
    web_channel,
)
from crucible.server.api.deps import Caller
from crucible.server.api.openai_errors import (
    OPENAI_PREFIX,
    openai_error,
    openai_too_large,
    to_openai_shape,
)
from crucible.server.api.openapi import install_openapi
from crucible.server.api.ports_host import PortsHost
from crucible.server.api.ports_origin import check_domain
from crucible.server.api.responses import (
    ANSWERED,
    error_response,
    response_for_exception,
    validation_message,
)
from crucible.server.billing.grid_carbon import parse_sources
from crucible.server.blobs import open_blob_store
from crucible.server.console import router as console_router
from crucible.server.console.web import browser_error
from crucible.server.front import FrontedAPI
from crucible.server.hotpath import HotPath
from crucible.server.leadership import Elector, settings_check
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.services.request_keys import Replay
from crucible.server.state import ServerState, load_or_create_secret
from crucible.server.store.db import create_store_engine, migrate
from crucible.server.wakeup_bus import PgWakeupBus
from crucible.settings import Settings

__all__ = ["build_state", "create_app"]

log = logging.getLogger("crucible.server")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class BodyLimit:
    """Refuse request bodies over a limit with 413 before they are buffered (blob uploads
    have their own, larger limit and stream to disk)."""

    def __init__(self, app: ASGIApp, limit: int, openai_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.openai_limit = openai_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v1/blobs/"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The HTTP server reads exactly this many bytes, so checking it is enough.
                if value.isascii() and value.isdigit() and int(value) > self.limit:
                    await _send_error(send, PayloadTooLargeError(self._message(scope)))
                    return
                await self.app(scope, receive, send)
                return
        # No length given (chunked): read up to the limit here, then replay to the app.
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await _send_error(send, PayloadTooLargeError(self._message(scope)))
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    def _message(self, scope: Scope) -> str:
        if scope["path"].startswith("/openai/"):
            return openai_too_large(self.openai_limit)
        if not scope["path"].startswith("/v1/"):  # a web endpoint's, a port's, the console's
            return f"request body is over the {self.limit:,}-byte limit"
        return (
            f"request body is over the {self.limit}-byte limit; send fewer inputs per request "
            "or pass large values as blobs"
        )


class HeadAsGet:
    """``HEAD`` answered as ``GET`` on the routes that take ``GET`` and not ``HEAD`` (RFC 9110
    9.3.2: a server takes HEAD wherever it takes GET): load balancers and uptime checks probe
    ``/healthz`` with HEAD. The route sees GET; the HTTP server, whose own scope still says
    HEAD, sends the head without the body. Web endpoints and ports take HEAD themselves and
    pass it on."""

    def __init__(self, app: ASGIApp, routes: FastAPI) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            allowed = _methods_of(self.routes, scope)
            if "GET" in allowed and "HEAD" not in allowed:
                scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


async def _send_error(send: Send, err: Error) -> None:
    import orjson

    body = orjson.dumps(err.to_wire())
    await send(
        {
            "type": "http.response.start",
            "status": err.http_status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _unreadable_body(request: Request, cause: BaseException | None) -> str:
    """Why a request body could not be read as JSON, in words the client can act on (the
    framework says only "There was an error parsing the body")."""
    encoding = request.headers.get("content-encoding", "").strip()
    if encoding and encoding.lower() != "identity":
        return (
            f"the body is compressed (Content-Encoding: {encoding[:40]}), which this API does "
            "not take: send it uncompressed"
        )
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deep to read; send a flatter document"
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8; send JSON encoded as UTF-8"
    return "the body could not be read as JSON; send UTF-8 JSON (Content-Type: application/json)"


def _methods_of(app: FastAPI, scope: Scope) -> list[str]:
    """The methods some route of ``app`` takes on the scope's path."""
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def build_state(settings: Settings) -> ServerState:
    """Open the store (migrating it) and the blob store."""
    parse_sources(settings.carbon_sources)  # a malformed setting stops the start, clearly
    engine = create_store_engine(settings.effective_database_url)
    migrate(engine)
    state = ServerState(
        settings=settings,
        engine=engine,
        blobs=open_blob_store(settings),
        secret=load_or_create_secret(settings),
    )
    state.secret_box  # noqa: B018 - a bad keyring stops the server at start, not at first use
    return state


def create_app(
    state: ServerState, *, run_scheduler: bool = True, replica: str | None = None
) -> FastAPI:
    """The control plane's app. ``replica``: its name among the store's replicas (the one
    it checked in under, cli/serve.py; None: a new one)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = SchedulerLoop(state)
        app.state.scheduler = scheduler
        state.wakeups.bind(asyncio.get_running_loop())  # wake-ups from worker threads
        s = state.settings
        postgres = state.engine.dialect.name == "postgresql"
        # The embedded (SQLite) server is the only process on its store: it always leads,
        # under a fixed name, so a restart takes the lease back at once, and it renews
        # rarely (nothing can take the lease; an idle store is not written every second).
        elector = Elector(
            state.engine,
            scheduler,
            state.clock.now_ms,
            lease_s=s.leader_lease_s,
            renew_s=s.leader_renew_s if postgres else 60.0,
            holder=replica if postgres else "embedded",
            url=s.advertise_url,
            check=settings_check(state.secret, state.secret_box.current, state.secret_box.key_ids),
        )
        app.state.elector = elector
        bus = PgWakeupBus(state.engine, state.wakeups, elector.holder) if postgres else None
        app.state.wakeup_bus = bus
        if bus is not None:

            def others_changed(n: int) -> None:
                bus.others = n > 0
                state.web.other_replicas = n
                log.info("%d other replica(s) on this store", n)

            elector.on_others = others_changed
        if bus is not None:
            await bus.start()
        if run_scheduler:
            # Not the market of record until elected (SchedulerLoop.start says so).
            state.market.leading = False
            elector.start()
        try:
            yield
        finally:
            if run_scheduler:
                await elector.stop()
            if bus is not None:
                await bus.stop()

    app = FrontedAPI(
        title="Crucible control plane",
        version=__version__,
        description="GPU compute exchange with a serverless Python runtime. Every route but "
        "/healthz (this document included) needs 'Authorization: Bearer <token>'. Errors are "
        '{"error": {"code": ..., "message": ...}} with stable codes (docs/reference/errors.md).',
        lifespan=lifespan,
        # Every route but /healthz needs a token, the API description included: it is served
        # below behind authentication (and the browsable /docs pages, which cannot send a
        # token, are off).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.crucible = state
    items.share_consumption(state)
    state.observations.share()
    state.leader.share(state.wakeups)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(who: Caller) -> JSONResponse:
        return JSONResponse(app.openapi())

    def shaped(request: Request, response: JSONResponse) -> JSONResponse:
        """Errors under /openai/ in OpenAI's shape, for its clients (api/openai_errors.py)."""
        if request.url.path.startswith(OPENAI_PREFIX):
            return to_openai_shape(response)
        return response

    @app.exception_handler(Error)
    async def on_error(request: Request, exc: Error) -> JSONResponse:
        return shaped(request, response_for_exception(exc))

    @app.exception_handler(Replay)
    async def on_replay(request: Request, exc: Replay) -> Response:
        """A request sent again with its Idempotency-Key: its first answer, as it was."""
        return Response(
            exc.body,
            status_code=exc.status,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = validation_message(exc.errors())
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body_error = any(e.get("loc", ())[:1] == ("body",) for e in exc.errors())
        if body_error and kind != "application/json":
            # A JSON body sent as text/plain (or a form) is not read as JSON: say so first.
            sent = kind[:60] or "none"
            message = (
                f"send the body as JSON (Content-Type: application/json, not {sent}); {message}"
            )
        return shaped(request, error_response(InvalidRequestError(message)))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = _unreadable_body(request, exc.__cause__)
        if exc.status_code == 405:
            # The router names the methods of the first route on the path only; a path can
            # have several (GET and POST /v1/apps): Allow lists them all.
            allowed = _methods_of(app, request.scope)
            headers["Allow"] = ", ".join(allowed)
            message = (
                f"{request.method} is not allowed on {request.url.path}; "
                f"it takes {', '.join(allowed)}"
            )
        elif exc.status_code == 404 and message == "Not Found" and "endpoint" not in request.scope:
            # No route has this path (the router's own answer, before any route ran): say
            # which, and where the routes are, instead of a bare "Not Found". Under /openai/
            # it is OpenAI's "Invalid URL" (code null), not a model that does not exist.
            message = (
                f"no route {request.method} {request.url.path}: the API's routes are in "
                "docs/reference/api.md (or GET /openapi.json)"
            )
            if request.url.path.startswith(OPENAI_PREFIX):
                return openai_error(
                    404,
                    f"Invalid URL ({request.method} {request.url.path}): the OpenAI API here "
                    "is under /openai/v1 (models, chat/completions, completions, embeddings)",
                )
        if exc.status_code == 405 or (exc.status_code == 404 and "endpoint" not in request.scope):
            shown = browser_error(request, exc.status_code, message)
            if shown is not None:
                shown.headers.update(headers)
                return shown
        body: dict[str, Any] = {"error": {"code": code, "message": message}}
        return shaped(request, JSONResponse(body, status_code=exc.status_code, headers=headers))

    @app.exception_handler(Exception)
    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        return shaped(request, response_for_exception(exc))

    for answered in ANSWERED:  # answered, not re-raised into the HTTP server's log
        app.add_exception_handler(answered, on_other)

    for module in (
        health,
        accounts,
        blobs,
        apps,
        deployments,
        calls,
        items,
        hosts,
        containers,
        billing,
        jobs,
        logs,
        market,
        metrics,
        secrets,
        dicts,
        queues,
        volumes,
        pods,
        clusters,
        audit,
        models,
        fine_tunes,
        openai,
        ssh_keys,
        access,
        ports,
        ports_ws,
        gateway,
        web_channel,
    ):
        app.include_router(module.router)
    # The web console (server/console/): pages at /, its own session cookie; the API's
    # routes above keep their token authentication.
    app.include_router(console_router)
    install_openapi(app)
    app.add_middleware(HeadAsGet, routes=app)
    app.add_middleware(
        BodyLimit,
        limit=state.settings.max_request_bytes,
        openai_limit=state.settings.openai_max_request_bytes,
    )
    app.add_middleware(HotPath, state=state)  # the two hot routes skip the rest
    if state.settings.ports_domain:
        # Outermost: a ports host ({pod}-{port}.DOMAIN) reaches its pod's port, nothing else.
        # (Checked now: middleware is built on the first request.)
        app.ports_domain = check_domain(state.settings.ports_domain)
        app.add_middleware(PortsHost, state=state)
    else:  # the gateway's requests before FastAPI's middleware (front.py)
        app.front = HotPath(app, state)
    return app
