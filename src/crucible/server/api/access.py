"""Access to running containers (exec, TCP tunnels, SSH) over two spliced WebSockets.

``/v1/containers/{id}/access`` is the client's (a user token; the first message is an
:class:`AccessOpen`); ``/v1/hosts/{host}/access/{session}`` is the agent's, dialled back after
its sync reply asked it to (hosts only dial out). The protocol is in
:mod:`crucible.protocol.access`. The client's token stops here: the agent and the container
never see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from crucible.errors import (
    ContainerExitedError,
    Error,
    InvalidRequestError,
    PermissionDeniedError,
    ServerUnavailableError,
)
from crucible.protocol.access import AccessOpen, AccessRequest
from crucible.server.auth import Principal
from crucible.server.relay import AccessRelay, AccessSession, until_first_ends
from crucible.server.services import access as svc
from crucible.server.services import access_handoff as handoff
from crucible.server.services.accounts import authenticate
from crucible.server.services.hosts import require_host
from crucible.server.state import ServerState

router = APIRouter(tags=["access"])
log = logging.getLogger(__name__)

# The first message must come soon: a client that opens and says nothing holds a slot.
_OPEN_TIMEOUT_S = 30.0


@router.websocket("/v1/containers/{container_id}/access")
async def container_access(websocket: WebSocket, container_id: str) -> None:
    """One session with a running container of the caller's account: exec, a TCP tunnel
    or SSH. Errors arrive as an ``error`` message (a stable code and what to do), then close."""
    state: ServerState = websocket.app.state.crucible
    await websocket.accept()
    session: AccessSession | None = None
    try:
        who = authenticate(state, websocket.headers.get("authorization"))
        if who.scope not in ("admin", "user"):
            raise PermissionDeniedError(
                f"reaching a container needs a user token, not a {who.scope} token"
            )
        req = await _first_message(websocket)
        session, agent = await open_session(state, who, container_id, req)
        await _splice(websocket, agent, session)
    except Error as exc:
        await _send_error(websocket, exc)
    except WebSocketDisconnect:
        pass
    finally:
        if session is not None:
            state.access.close(session.id)
        await _close(websocket)


@router.websocket("/v1/hosts/{host_id}/access/{session_id}")
async def agent_access(websocket: WebSocket, host_id: str, session_id: str) -> None:
    """The agent's end of a session (a host token of the host's account)."""
    state: ServerState = websocket.app.state.crucible
    await websocket.accept()
    try:
        who = authenticate(state, websocket.headers.get("authorization"))
        with state.engine.connect() as conn:
            require_host(conn, who, host_id)
        session = state.access.attach(host_id, session_id, websocket)
    except Error as exc:
        await _send_error(websocket, exc)
        await _close(websocket)
        return
    await session.done.wait()  # the client's route splices; returning closes this socket
    await _close(websocket)


async def open_session(
    state: ServerState, who: Principal, container_id: str, req: AccessOpen
) -> tuple[AccessSession, WebSocket]:
    """Check the caller may reach the container, ask its agent to dial back, and wait for
    it: the session (close it with ``state.access.close``) and the agent's WebSocket."""
    with state.engine.connect() as conn:
        target = svc.access_target(conn, who, container_id, req)
    request = AccessRequest(
        session_id=AccessRelay.new_id(),
        container_id=target.container_id,
        open=req,
        ssh_keys=target.ssh_keys,
    )
    advertised = state.settings.advertise_url
    if advertised:
        request.dial_url = advertised.rstrip("/")
    session = state.access.open(
        who.account_id,
        target.host_id,
        request,
        max_per_account=state.settings.access_max_sessions,
    )
    if advertised:
        # Replicas: the agent may sync with another one; it takes the request from the
        # store and dials this replica back (services/access_handoff.py).
        session.delivered = True
        with state.engine.begin() as conn:
            handoff.put_request(conn, target.host_id, request, state.clock.now_ms())
    state.wakeups.notify(f"host:{target.host_id}")
    timeout_s = state.settings.access_dial_timeout_s
    try:
        agent = await asyncio.wait_for(asyncio.shield(session.agent), timeout=timeout_s)
    except TimeoutError:
        _forget(state, session)
        raise ServerUnavailableError(
            f"the host of container {container_id} did not answer within {timeout_s:g} s "
            "(its agent may be down or restarting); try again"
        ) from None
    except BaseException:
        _forget(state, session)
        raise
    return session, agent


def _forget(state: ServerState, session: AccessSession) -> None:
    """End a session no agent dialled back for, and its request in the store if any."""
    state.access.close(session.id)
    if session.request.dial_url is not None:
        with state.engine.begin() as conn:
            handoff.drop_request(conn, session.id)


async def _first_message(websocket: WebSocket) -> AccessOpen:
    try:
        msg = await asyncio.wait_for(websocket.receive(), timeout=_OPEN_TIMEOUT_S)
    except TimeoutError:
        raise InvalidRequestError(
            f"no access request within {_OPEN_TIMEOUT_S:g} s: send an AccessOpen message first"
        ) from None
    if msg["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(msg.get("code", 1000))
    text = msg.get("text")
    if text is None:
        raise InvalidRequestError("the first message must be a JSON AccessOpen (text)")
    try:
        return AccessOpen.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise InvalidRequestError(f"bad access request: {where}: {first.get('msg')}") from None


async def _splice(client: WebSocket, agent: WebSocket, session: AccessSession) -> None:
    """Forward messages both ways until either side closes or the session is ended (its
    container stopped). One message in flight per direction: a slow side slows the other."""
    await until_first_ends(_pump(agent, client), _pump(client, agent), session.done.wait())
    if session.ended_by_container:
        await _send_error(
            client,
            ContainerExitedError(
                f"container {session.request.container_id} ended; the session is closed"
            ),
        )


async def _pump(src: WebSocket, dst: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            msg = await src.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is not None:
                await dst.send_bytes(data)
            elif msg.get("text") is not None:
                await dst.send_text(msg["text"])


async def _send_error(websocket: WebSocket, exc: Error) -> None:
    body = json.dumps({"type": "error", "code": exc.code, "message": exc.message})
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if websocket.application_state == WebSocketState.CONNECTED:
            await websocket.send_text(body)


async def _close(websocket: WebSocket) -> None:
    # A peer that left already (a dropped SSH client) needs no close: nothing to report.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if websocket.application_state == WebSocketState.CONNECTED:
            await websocket.close(code=1000)
