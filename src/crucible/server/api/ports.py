"""HTTP ports of running containers and pods, published through the control plane.

Two URLs forward an HTTP request to a port inside a container (its own network namespace)
over an access session (a ``tcp`` session the agent dials back for, as
``crucible container port-forward`` uses) and stream the response back:

- ``/pods/{pod}/ports/{port}/{path}``: a pod's published HTTP port (``--port PORT/http``),
  stable across stop/start (it reaches the pod's current container). The full path goes to
  the pod, whose app serves under it (the pod's ``$CRUCIBLE_PORT_{port}_PATH``), with the
  client's ``Host`` and ``X-Forwarded-*``: what a web app behind a reverse proxy expects.
- ``/ports/{container}/{port}/{path}``: any port of a running container, with the prefix
  stripped (the container sees ``/{path}``).

Two ways in:

- the account's token (``Authorization: Bearer``), like every route;
- a per-port secret link (``GET /v1/pods/{pod}/ports/{port}/link``,
  ``GET /v1/containers/{id}/ports/{port}/link``): its ``key`` (an HMAC of the pod or
  container and the port under the server's secret, so nothing is stored; it dies with the
  pod or container) in the query (``?crucible_key=``), after which a cookie scoped to the
  port's path carries it, so a browser's next requests (a notebook's assets) work.

Anything else is one answer: ``404`` for an unknown pod or container, another account's, or
a wrong key; ``401`` without credentials. The caller's token, the link's key and the
exchange's cookies are not passed to the container; the client's other cookies are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

import h11
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import Field
from sqlalchemy import Connection
from starlette.requests import HTTPConnection

from crucible.errors import (
    AuthError,
    Error,
    InvalidRequestError,
    NotFoundError,
    ServerUnavailableError,
    error_from_wire,
)
from crucible.protocol.access import CHANNEL_IN, CHANNEL_OUT, AccessOpen
from crucible.protocol.common import Wire
from crucible.server.api import ports_origin
from crucible.server.api.access import open_session
from crucible.server.api.deps import Builder, State
from crucible.server.auth import Principal
from crucible.server.own_cookies import OWN_COOKIES, PORT_COOKIE, cookie_name, cookies_but_ours
from crucible.server.services import access as svc
from crucible.server.services import pod_ports
from crucible.server.services.accounts import authenticate
from crucible.server.state import ServerState

router = APIRouter(tags=["access"])

KEY_PARAM = "crucible_key"
COOKIE = PORT_COOKIE
# Hop-by-hop headers and the exchange's own credentials stay here.
_DROP = {
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",  # passed on without the exchange's own cookies (cookies_but_ours)
    "x-forwarded-proto",  # a pod's URL sets these itself
    "x-forwarded-host",
    "x-forwarded-for",
    "x-forwarded-prefix",
}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class PortLink(Wire):
    url: str
    key: str = Field(description="the per-port secret in the link")


_Port = Annotated[int, Path(ge=1, le=65535, description="a TCP port inside the container")]


def port_key(secret: str, container_id: str, port: int) -> str:
    msg = f"port:{container_id}:{port}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:32]


def pod_port_key(secret: str, pod_id: str, port: int) -> str:
    """A pod's port key: of the pod, not its container, so a link survives stop/start."""
    msg = f"pod-port:{pod_id}:{port}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:32]


@router.get("/v1/containers/{container_id}/ports/{port}/link")
def port_link(
    container_id: str, port: _Port, request: Request, who: Builder, state: State
) -> PortLink:
    """A secret link to HTTP ``port`` of a running container of the caller's account:
    whoever has it reaches that port (and only it) while the container runs."""
    check_port(port)
    with state.engine.connect() as conn:
        target = svc.access_target(conn, who, container_id, AccessOpen(kind="tcp", port=port))
    key = port_key(state.secret, target.container_id, port)
    origin = own_origin(state, request, target.container_id, port)
    if origin:  # the port's own origin (api/ports_host.py), served at its root
        return PortLink(url=f"{origin}/?{KEY_PARAM}={key}", key=key)
    base = str(request.base_url).rstrip("/")
    return PortLink(url=f"{base}/ports/{target.container_id}/{port}/?{KEY_PARAM}={key}", key=key)


@router.get("/v1/pods/{pod}/ports/{port}/link")
def pod_port_link(pod: str, port: _Port, request: Request, who: Builder, state: State) -> PortLink:
    """A secret link to published HTTP ``port`` of a pod of the caller's account (by id or
    name), at the pod's own URL: it stays valid across stop/start, until the pod is
    deleted."""
    with state.engine.connect() as conn:
        target = pod_ports.pod_port(conn, who, pod, port, by_name=True)
    key = pod_port_key(state.secret, target.pod_id, port)
    domain = state.settings.ports_domain
    if domain:  # the port's own origin (api/ports_host.py)
        origin = ports_origin.host_origin(
            request, ports_origin.check_domain(domain), target.pod_id, port
        )
        return PortLink(url=f"{origin}{target.path}?{KEY_PARAM}={key}", key=key)
    base = str(request.base_url).rstrip("/")
    return PortLink(url=f"{base}{target.path}?{KEY_PARAM}={key}", key=key)


@router.api_route(
    "/ports/{container_id}/{port}/{path:path}",
    methods=METHODS,
    include_in_schema=False,  # what is under it is the container's own server
)
async def published_port(container_id: str, port: _Port, path: str, request: Request) -> Response:
    """The container's port with the prefix stripped: the container sees ``/PATH``."""
    state: ServerState = request.app.state.crucible
    check_port(port)
    who, via_key = caller(state, request, container_id, port)
    if state.settings.ports_domain:  # the port has its own origin: go there
        with state.engine.connect() as conn:  # another account's container: 404, as there
            svc.access_target(conn, who, container_id, AccessOpen(kind="tcp", port=port))
        rest = raw_path(request).split("/", 4)[-1]
        return to_own_origin(state, request, container_id, port, "/" + rest)
    cookie = port_key(state.secret, container_id, port) if via_key else None
    return await forward(
        state,
        request,
        Upstream(
            who=who,
            container_id=container_id,
            port=port,
            path="/" + path,
            host=f"127.0.0.1:{port}",
            cookie_path=f"/ports/{container_id}/{port}/",
            cookie=cookie,
        ),
    )


@router.api_route("/pods/{pod_id}/ports/{port}", methods=METHODS, include_in_schema=False)
async def pod_port_root(pod_id: str, port: _Port, request: Request) -> Response:
    """The port's URL without its last slash: the same URL with it (a relative link on
    the app's first page, and the link's cookie scoped to the path, need it)."""
    state: ServerState = request.app.state.crucible
    who, _via_key = pod_caller(state, request, pod_id, port)  # 401/404 first, as below
    with state.engine.connect() as conn:
        target = pod_ports.pod_port(conn, who, pod_id, port, by_name=False)
    return to_own_origin(state, request, pod_id, port, target.path)


@router.api_route(
    "/pods/{pod_id}/ports/{port}/{path:path}", methods=METHODS, include_in_schema=False
)
async def pod_port(pod_id: str, port: _Port, path: str, request: Request) -> Response:
    """The pod's published HTTP port, at a URL that survives stop/start; the full path goes
    to the pod (its app serves under ``$CRUCIBLE_PORT_{port}_PATH``), with the client's
    ``Host`` and ``X-Forwarded-*`` so its redirects and origin checks see the browser's."""
    state: ServerState = request.app.state.crucible
    who, via_key = pod_caller(state, request, pod_id, port)
    with state.engine.connect() as conn:
        target = pod_ports.pod_port(conn, who, pod_id, port, by_name=False)
        if state.settings.ports_domain:  # the port has its own origin: go there
            return to_own_origin(state, request, pod_id, port, raw_path(request))
        container_id = pod_ports.running_container(conn, target)
    return await forward(
        state,
        request,
        pod_upstream(state, request, who, via_key, pod_id, port, container_id, target.path),
    )


def own_origin(state: ServerState, request: HTTPConnection, owner_id: str, port: int) -> str:
    """Where a pod's or a container's port lives: its own origin with
    ``CRUCIBLE_PORTS_DOMAIN`` set, else "" (this exchange's origin, a path under it)."""
    domain = state.settings.ports_domain
    if not domain:
        return ""
    return ports_origin.host_origin(request, ports_origin.check_domain(domain), owner_id, port)


def to_own_origin(
    state: ServerState, request: HTTPConnection, owner_id: str, port: int, path: str
) -> RedirectResponse:
    """307 to ``path`` (and the request's query) on the port's own host
    (``CRUCIBLE_PORTS_DOMAIN``)."""
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{own_origin(state, request, owner_id, port)}{path}{query}", 307)


@dataclass(frozen=True)
class Upstream:
    """Where a relayed request goes and how it is presented there."""

    who: Principal
    container_id: str
    port: int
    path: str  # the path the container's server sees
    host: str  # the Host header it sees
    cookie_path: str  # the scope of the link's cookie
    cookie: str | None  # the link's key, set as a cookie on the response (None: a token)
    forwarded: list[tuple[str, str]] = field(default_factory=list)


def pod_upstream(
    state: ServerState,
    request: HTTPConnection,
    who: Principal,
    via_key: bool,
    pod_id: str,
    port: int,
    container_id: str,
    prefix: str,
) -> Upstream:
    """A pod's port as both its URLs present it: the path as sent, the browser's Host and
    ``X-Forwarded-*``, the link's cookie scoped to ``prefix`` (the path URL's; ``""`` on the
    port's own host: all of it)."""
    return Upstream(
        who=who,
        container_id=container_id,
        port=port,
        path=raw_path(request),
        host=request.headers.get("host") or f"127.0.0.1:{port}",
        cookie_path=prefix or "/",
        cookie=pod_port_key(state.secret, pod_id, port) if via_key else None,
        forwarded=forwarded_headers(request, prefix),
    )


async def forward(state: ServerState, request: Request, up: Upstream) -> Response:
    """Send the request to the container's port over a ``tcp`` session and stream the
    response back."""
    body = await request.body()
    query = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != KEY_PARAM]
    target = up.path + (f"?{urlencode(query)}" if query else "")
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
    cookie = cookies_but_ours(request.headers.get("cookie"))
    if cookie:
        headers.append(("cookie", cookie))
    headers += [*up.forwarded, ("host", up.host), ("connection", "close")]
    if body or request.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(body))))
    conn = h11.Connection(our_role=h11.CLIENT)
    try:
        raw = conn.send(h11.Request(method=request.method, target=target, headers=headers))
    except h11.LocalProtocolError as exc:
        raise InvalidRequestError(f"this request cannot be relayed as HTTP/1.1: {exc}") from exc
    raw = (raw or b"") + (conn.send(h11.Data(data=body)) or b"") if body else raw or b""
    raw += conn.send(h11.EndOfMessage()) or b""

    port, container_id = up.port, up.container_id
    session, agent = await open_session(
        state, up.who, container_id, AccessOpen(kind="tcp", port=port)
    )
    try:
        await await_ready(agent)
        await agent.send_bytes(bytes((CHANNEL_IN,)) + raw)
        response = await _next_event(conn, agent)
        if not isinstance(response, h11.Response):
            raise ServerUnavailableError(
                f"port {port} of container {container_id} did not answer with HTTP"
            )
    except BaseException:
        state.access.close(session.id)
        raise
    out_headers = [
        (k.decode(), v.decode("latin-1"))
        for k, v in response.headers
        if k.decode().lower() not in ("connection", "transfer-encoding", "keep-alive")
    ]

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                event = await _next_event(conn, agent)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                else:
                    return
        finally:
            state.access.close(session.id)

    result = StreamingResponse(stream(), status_code=response.status_code)
    for k, v in out_headers:
        if k.lower() == "content-length" and request.method == "HEAD":
            continue
        if k.lower() == "set-cookie" and cookie_name(v) in OWN_COOKIES:
            continue  # a container may not set (or clear) the exchange's cookies
        result.headers.append(k, v)
    if up.cookie is not None:
        result.set_cookie(
            COOKIE,
            up.cookie,
            path=up.cookie_path,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return result


def forwarded_headers(request: HTTPConnection, prefix: str) -> list[tuple[str, str]]:
    """What a reverse proxy tells the app behind it: the client's scheme, host and address,
    and the prefix it is served under."""
    client = request.client.host if request.client is not None else ""
    out = [
        ("x-forwarded-proto", request.url.scheme.replace("ws", "http")),
        ("x-forwarded-host", request.headers.get("host", "")),
        ("x-forwarded-for", client),
    ]
    # On its own host (api/ports_host.py) the port is served at the root: no prefix.
    return [*out, ("x-forwarded-prefix", prefix.rstrip("/"))] if prefix else out


def raw_path(request: HTTPConnection) -> str:
    """The request's path as the client sent it (still percent-encoded)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(request.url.path)


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise InvalidRequestError(f"port {port} is out of range (1-65535)")


def caller(
    state: ServerState, request: HTTPConnection, container_id: str, port: int
) -> tuple[Principal, bool]:
    """The account a request (or a WebSocket upgrade) to a container's port acts for, and
    whether it came with the port's key."""
    return _token_or_key(
        state,
        request,
        lambda conn: svc.container_account(conn, container_id),
        port_key(state.secret, container_id, port),
        f"no published port {port} of container {container_id[:80]!r}",
    )


def pod_caller(
    state: ServerState, request: HTTPConnection, pod_id: str, port: int
) -> tuple[Principal, bool]:
    """As :func:`caller`, for a pod's URL: the key is the pod's (``pod_port_key``)."""
    return _token_or_key(
        state,
        request,
        lambda conn: pod_ports.pod_account(conn, pod_id),
        pod_port_key(state.secret, pod_id, port),
        f"no published port {port} of pod {pod_id[:80]!r}",
    )


def _token_or_key(
    state: ServerState,
    request: HTTPConnection,
    account_of: Callable[[Connection], str | None],
    expected_key: str,
    unknown: str,
) -> tuple[Principal, bool]:
    """A user token (``Authorization``, which wins), else the port's key (``?crucible_key=``
    or its cookie): one ``404`` (``unknown``) for a wrong key and a target that is gone."""
    key = request.query_params.get(KEY_PARAM) or request.cookies.get(COOKIE)
    if key is None or request.headers.get("authorization"):
        who = authenticate(state, request.headers.get("authorization"))
        if who.scope not in ("admin", "user"):
            raise AuthError("a published port needs a user token or its secret link")
        return who, False
    with state.engine.connect() as conn:
        account = account_of(conn)
    # Bytes: compare_digest refuses str with non-ASCII characters (a 500 otherwise).
    if account is None or not hmac.compare_digest(key.encode(), expected_key.encode()):
        raise NotFoundError(unknown)
    return Principal(account_id=account, scope="user"), True


async def await_ready(agent: Any) -> None:
    msg = await agent.receive()
    text = msg.get("text")
    if msg["type"] == "websocket.disconnect" or text is None:
        raise ServerUnavailableError("the container's agent closed the session")
    control = json.loads(text)
    if control.get("type") == "error":
        err: Error = error_from_wire(str(control.get("code")), str(control.get("message")))
        raise err


async def _next_event(conn: h11.Connection, agent: Any) -> Any:
    """The next h11 event of the response, reading from the agent as needed."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        msg = await agent.receive()
        data = msg.get("bytes")
        if msg["type"] == "websocket.disconnect":
            conn.receive_data(b"")
        elif data is not None and data[:1] == bytes((CHANNEL_OUT,)):
            conn.receive_data(data[1:])
        elif msg.get("text") is not None and '"exit"' in msg["text"]:
            conn.receive_data(b"")
