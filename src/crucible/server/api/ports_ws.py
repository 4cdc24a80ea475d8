"""WebSockets through a published HTTP port (``/pods/{pod}/ports/{port}/{path}`` and
``/ports/{container}/{port}/{path}``).

The same URLs as :mod:`crucible.server.api.ports`, upgraded: behind the same credentials (the
account's token, or the port's secret link, as ``?crucible_key=`` or its cookie), only to
the caller's own running containers (a pod's URL: its current container). The server opens
a ``tcp`` access session to the port (the agent dials back, as for every session), performs
the WebSocket handshake with the container's server over it (``websockets``' sans-I/O
client), and only then accepts the client's WebSocket, with the subprotocol the container
chose. From there every message is relayed both ways, text as text and binary as binary;
the container's pings are answered (the ASGI server answers the client's); a close from
either side closes the other with its code and reason.

A refusal before the upgrade is an HTTP answer with the usual error body (``401``, ``404``,
``400`` for a port nobody listens on); a container server that refuses the upgrade gives its
own status and body back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, WebSocket
from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect, WebSocketState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.protocol import State as WsState
from websockets.uri import parse_uri

from crucible.errors import Error, InvalidRequestError, ServerUnavailableError
from crucible.protocol.access import CHANNEL_IN, CHANNEL_OUT, AccessOpen
from crucible.server.api.access import open_session
from crucible.server.api.ports import (
    KEY_PARAM,
    await_ready,
    caller,
    check_port,
    forwarded_headers,
    own_origin,
    pod_caller,
    raw_path,
)
from crucible.server.auth import Principal
from crucible.server.own_cookies import cookies_but_ours
from crucible.server.relay import AccessSession, until_first_ends
from crucible.server.services import pod_ports
from crucible.server.state import ServerState

router = APIRouter(tags=["access"])

# The largest message relayed either way: uvicorn's own default for the client's side.
_MAX_MESSAGE_BYTES = 16 << 20
# Handshake headers the relay makes itself (or that name the exchange, not the container).
_OWN = {
    "authorization",
    "connection",
    "upgrade",
    "host",
    "cookie",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "content-length",
    "transfer-encoding",
    "x-forwarded-proto",  # a pod's URL sets these itself
    "x-forwarded-host",
    "x-forwarded-for",
    "x-forwarded-prefix",
}
# The agent accepts session messages of up to 64 KiB of data (agent/access.py's _CHUNK):
# a larger WebSocket frame goes to it in pieces.
_PIECE = 1 << 16
# A close code the relay may send when the container's side ends without a close frame
# (1006, "abnormal", may not be sent on the wire).
_GONE = 1001


@router.websocket("/ports/{container_id}/{port}/{path:path}")
async def published_port_websocket(
    websocket: WebSocket, container_id: str, port: int, path: str
) -> None:
    """Relay a WebSocket to ``port`` inside the caller's running container (the container
    sees ``/{path}``)."""
    state: ServerState = websocket.app.state.crucible

    def target() -> _Target:
        check_port(port)
        who, _via_key = caller(state, websocket, container_id, port)
        if state.settings.ports_domain:
            origin = own_origin(state, websocket, container_id, port)
            raise InvalidRequestError(
                f"port {port} of container {container_id} is served on its own host: "
                f"connect to {origin.replace('http', 'ws', 1)}/{path}"
            )
        return _Target(who, container_id, port, "/" + path, None, [])

    await _serve(websocket, target)


async def serve_container(websocket: WebSocket, container_id: str, port: int) -> None:
    """Relay a WebSocket to a container's port on its own host (api/ports_host.py): the
    path as sent."""
    state: ServerState = websocket.app.state.crucible

    def target() -> _Target:
        check_port(port)
        who, _via_key = caller(state, websocket, container_id, port)
        return _Target(who, container_id, port, raw_path(websocket), None, [])

    await _serve(websocket, target)


@router.websocket("/pods/{pod_id}/ports/{port}/{path:path}")
async def pod_port_websocket(websocket: WebSocket, pod_id: str, port: int, path: str) -> None:
    """Relay a WebSocket to a pod's published HTTP ``port`` (the pod sees the full path,
    the client's ``Host`` and ``Origin``, and ``X-Forwarded-*``). With
    ``CRUCIBLE_PORTS_DOMAIN`` set the port lives on its own host only: refused here."""
    await serve_pod(websocket, pod_id, port, own_host=False)


async def serve_pod(websocket: WebSocket, pod_id: str, port: int, *, own_host: bool) -> None:
    """Relay a WebSocket to a pod's port: at its path URL (``own_host`` False) or on its
    own host (api/ports_host.py: no prefix, ``X-Forwarded-Prefix`` empty)."""
    state: ServerState = websocket.app.state.crucible

    def target() -> _Target:
        check_port(port)
        who, _via_key = pod_caller(state, websocket, pod_id, port)
        with state.engine.connect() as conn:
            found = pod_ports.pod_port(conn, who, pod_id, port, by_name=False)
            if state.settings.ports_domain and not own_host:
                origin = own_origin(state, websocket, pod_id, port)
                raise InvalidRequestError(
                    f"pod {found.name}'s port {port} is served on its own host: connect to "
                    f"{origin.replace('http', 'ws', 1)}{raw_path(websocket)}"
                )
            container_id = pod_ports.running_container(conn, found)
        return _Target(
            who,
            container_id,
            port,
            raw_path(websocket),
            websocket.headers.get("host"),
            forwarded_headers(websocket, "" if own_host else found.path),
        )

    await _serve(websocket, target)


@dataclass(frozen=True)
class _Target:
    who: Principal
    container_id: str
    port: int
    path: str  # the path the container's server sees, as sent on the wire
    host: str | None  # its Host header (None: 127.0.0.1:PORT)
    forwarded: list[tuple[str, str]]


async def _serve(websocket: WebSocket, resolve: Callable[[], _Target]) -> None:
    state: ServerState = websocket.app.state.crucible
    session: AccessSession | None = None
    try:
        to = resolve()
        session, agent = await open_session(
            state, to.who, to.container_id, AccessOpen(kind="tcp", port=to.port)
        )
        await await_ready(agent)
        protocol, response = await _handshake(websocket, agent, to)
        if response is None or protocol.state is not WsState.OPEN:
            await _deny_upstream(websocket, to.port, to.container_id, response)
            return
        await websocket.accept(subprotocol=response.headers.get("Sec-WebSocket-Protocol"))
        await _relay(websocket, agent, protocol, session)
    except Error as exc:
        await deny(websocket, exc)
    except WebSocketDisconnect:
        pass
    finally:
        if session is not None:
            state.access.close(session.id)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            if websocket.application_state == WebSocketState.CONNECTED:
                await websocket.close(code=_GONE)


async def _handshake(
    websocket: WebSocket, agent: Any, to: _Target
) -> tuple[ClientProtocol, WsResponse | None]:
    """The WebSocket handshake with the container's server over the session: the protocol
    and the server's response (None when the connection ended before one)."""
    query = [
        (k, v) for k, v in parse_qsl(websocket.url.query, keep_blank_values=True) if k != KEY_PARAM
    ]
    target = f"ws://127.0.0.1:{to.port}{to.path}" + (f"?{urlencode(query)}" if query else "")
    offered = [
        p.strip()
        for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        if p.strip()
    ]
    protocol = ClientProtocol(
        parse_uri(target),
        subprotocols=offered or None,  # type: ignore[arg-type]  # names the client chose
        max_size=_MAX_MESSAGE_BYTES,
    )
    request = protocol.connect()
    if to.host:
        del request.headers["Host"]
        request.headers["Host"] = to.host
    for name, value in websocket.headers.items():
        if name.lower() not in _OWN:
            request.headers[name] = value
    for name, value in to.forwarded:
        request.headers[name] = value
    cookie = cookies_but_ours(websocket.headers.get("cookie"))
    if cookie:
        request.headers["Cookie"] = cookie
    protocol.send_request(request)
    await _flush(protocol, agent, asyncio.Lock())
    while True:
        for event in protocol.events_received():
            if isinstance(event, WsResponse):
                return protocol, event
        data = await _from_container(agent)
        if data is None:
            return protocol, None
        protocol.receive_data(data)


async def _relay(
    client: WebSocket, agent: Any, protocol: ClientProtocol, session: AccessSession
) -> None:
    lock = asyncio.Lock()  # one writer of the protocol's bytes at a time, in order
    await until_first_ends(
        _to_container(client, agent, protocol, lock),
        _to_client(client, agent, protocol, lock),
        session.done.wait(),
    )


async def _to_container(
    client: WebSocket, agent: Any, protocol: ClientProtocol, lock: asyncio.Lock
) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            msg = await client.receive()
            if msg["type"] == "websocket.disconnect":
                if protocol.state is WsState.OPEN:
                    protocol.send_close(int(msg.get("code") or 1000), str(msg.get("reason") or ""))
                    await _flush(protocol, agent, lock)
                return
            if msg.get("bytes") is not None:
                protocol.send_binary(msg["bytes"])
            elif msg.get("text") is not None:
                protocol.send_text(msg["text"].encode())
            await _flush(protocol, agent, lock)


async def _to_client(
    client: WebSocket, agent: Any, protocol: ClientProtocol, lock: asyncio.Lock
) -> None:
    parts: list[bytes] = []
    opcode: Opcode | None = None
    while True:
        data = await _from_container(agent)
        if data is None:
            protocol.receive_eof()
        else:
            protocol.receive_data(data)
        for frame in protocol.events_received():
            assert isinstance(frame, Frame)  # after the handshake only frames arrive
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                opcode, parts = frame.opcode, [bytes(frame.data)]
            elif frame.opcode is Opcode.CONT:
                parts.append(bytes(frame.data))
            else:
                continue  # ping (answered by the protocol), pong, close (below)
            if frame.fin and opcode is not None:
                whole = b"".join(parts)
                if opcode is Opcode.TEXT:
                    await client.send_text(whole.decode())
                else:
                    await client.send_bytes(whole)
                parts, opcode = [], None
        await _flush(protocol, agent, lock)  # pongs and the close handshake's reply
        if protocol.state is WsState.CLOSED or data is None or protocol.close_rcvd:
            rcvd = protocol.close_rcvd
            code = rcvd.code if rcvd is not None and rcvd.code not in (1005, 1006) else _GONE
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await client.close(code=code, reason=rcvd.reason if rcvd is not None else "")
            return


async def _from_container(agent: Any) -> bytes | None:
    """The next bytes from the container's port, or None when its connection ended."""
    while True:
        msg = await agent.receive()
        if msg["type"] == "websocket.disconnect":
            return None
        data = msg.get("bytes")
        if data is not None and data[:1] == bytes((CHANNEL_OUT,)):
            return bytes(data[1:])
        text = msg.get("text")
        if text is not None and json.loads(text).get("type") in ("exit", "error", "eof"):
            return None


async def _flush(protocol: ClientProtocol, agent: Any, lock: asyncio.Lock) -> None:
    async with lock:
        for chunk in protocol.data_to_send():
            # b"" means "half-close the connection": the session ends with us instead.
            for at in range(0, len(chunk), _PIECE):
                await agent.send_bytes(bytes((CHANNEL_IN,)) + chunk[at : at + _PIECE])


async def deny(websocket: WebSocket, exc: Error) -> None:
    """Answer the upgrade with the error's HTTP status and body (or, once accepted, close
    with its message)."""
    body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if websocket.application_state == WebSocketState.CONNECTING:
            await _send_denial(websocket, exc.http_status, body, "application/json")
        elif websocket.application_state == WebSocketState.CONNECTED:
            await websocket.close(code=1011, reason=exc.message[:120])


async def _deny_upstream(
    websocket: WebSocket, port: int, container_id: str, response: WsResponse | None
) -> None:
    """The container's server refused the upgrade: its status and body go back as they
    were (a server that closed without answering is a 502 that says so)."""
    if response is None:
        exc = ServerUnavailableError(
            f"port {port} of container {container_id} closed the connection during the "
            "WebSocket handshake"
        )
        await deny(websocket, exc)
        return
    media = response.headers.get("Content-Type", "text/plain")
    await _send_denial(websocket, response.status_code, bytes(response.body or b""), media)


async def _send_denial(websocket: WebSocket, status: int, body: bytes, media: str) -> None:
    response = Response(content=body, status_code=status, media_type=media)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the extension: a close before accepting is its 403
        await websocket.close(code=1008)
