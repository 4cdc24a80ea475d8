"""HTTP ports of running containers, published through the control plane.

``/ports/{container}/{port}/{path}`` forwards an HTTP request to ``port`` inside the
container (its own network namespace) over an access session (a ``tcp`` session the agent
dials back for, as ``crucible container port-forward`` uses) and streams the response back.
Two ways in:

- the account's token (``Authorization: Bearer``), like every route;
- a per-port secret link from ``GET /v1/containers/{id}/ports/{port}/link``: its ``key``
  (an HMAC of the container and port under the server's secret, so nothing is stored and it
  dies with the container) in the query (``?crucible_key=``), after which a cookie scoped to
  the port's path carries it, so a browser's next requests (a notebook's assets) work.

Anything else is one answer: ``404`` for an unknown container, another account's, or a wrong
key. The caller's token and the link's key are not passed to the container.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import h11
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field
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
from crucible.server.api.access import open_session
from crucible.server.api.deps import Builder, State
from crucible.server.auth import Principal
from crucible.server.services import access as svc
from crucible.server.services.accounts import authenticate
from crucible.server.state import ServerState

router = APIRouter(tags=["access"])

KEY_PARAM = "crucible_key"
COOKIE = "crucible_port_key"
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
    "cookie",
}


class PortLink(Wire):
    url: str
    key: str = Field(description="the per-port secret in the link")


_Port = Annotated[int, Path(ge=1, le=65535, description="a TCP port inside the container")]


def port_key(secret: str, container_id: str, port: int) -> str:
    msg = f"port:{container_id}:{port}".encode()
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
    base = str(request.base_url).rstrip("/")
    return PortLink(url=f"{base}/ports/{target.container_id}/{port}/?{KEY_PARAM}={key}", key=key)


@router.api_route(
    "/ports/{container_id}/{port}/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,  # what is under it is the container's own server
)
async def published_port(container_id: str, port: _Port, path: str, request: Request) -> Response:
    state: ServerState = request.app.state.crucible
    check_port(port)
    who, via_key = caller(state, request, container_id, port)
    body = await request.body()
    query = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != KEY_PARAM]
    target = "/" + path + (f"?{urlencode(query)}" if query else "")
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
    headers += [("host", f"127.0.0.1:{port}"), ("connection", "close")]
    if body or request.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(body))))
    conn = h11.Connection(our_role=h11.CLIENT)
    raw = conn.send(h11.Request(method=request.method, target=target, headers=headers))
    raw = (raw or b"") + (conn.send(h11.Data(data=body)) or b"") if body else raw or b""
    raw += conn.send(h11.EndOfMessage()) or b""

    session, agent = await open_session(state, who, container_id, AccessOpen(kind="tcp", port=port))
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
        if k.lower() != "content-length" or request.method != "HEAD":
            result.headers.append(k, v)
    if via_key:
        result.set_cookie(
            COOKIE,
            port_key(state.secret, container_id, port),
            path=f"/ports/{container_id}/{port}/",
            httponly=True,
            samesite="lax",
        )
    return result


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise InvalidRequestError(f"port {port} is out of range (1-65535)")


def caller(
    state: ServerState, request: HTTPConnection, container_id: str, port: int
) -> tuple[Principal, bool]:
    """The account a request (or a WebSocket upgrade) acts for, and whether it came with
    the port's key."""
    key = request.query_params.get(KEY_PARAM) or request.cookies.get(COOKIE)
    if key is None or request.headers.get("authorization"):
        who = authenticate(state, request.headers.get("authorization"))
        if who.scope not in ("admin", "user"):
            raise AuthError("a published port needs a user token or its secret link")
        return who, False
    with state.engine.connect() as conn:
        account = svc.container_account(conn, container_id)
    if account is None or not hmac.compare_digest(key, port_key(state.secret, container_id, port)):
        raise NotFoundError(f"no published port {port} of container {container_id!r}")
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
