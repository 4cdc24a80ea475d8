"""``/v1/containers/{id}/channel``: the WebSocket a warm web endpoint's worker dials to this
server, on which the gateway hands it requests (server/web_channel.py,
protocol/web_channel.py).

Only the container itself may open it: its container token, for the container in the path,
while the container has not stopped. Anyone else (another container, any account's user
token) is refused with close code 1008 and a reason, before anything is handed to it.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket
from sqlalchemy import select
from starlette.websockets import WebSocketDisconnect

from crucible.errors import AuthError, Error, PermissionDeniedError
from crucible.server.services.accounts import authenticate
from crucible.server.state import ServerState
from crucible.server.store.tables import containers
from crucible.server.web_channel import Channel

router = APIRouter(tags=["containers"])
log = logging.getLogger("crucible.web_channel")

_MAX_SLOTS = 1024


def _admit(state: ServerState, websocket: WebSocket, container_id: str) -> str:
    """The container's function id, once its own token is shown; else an Error."""
    principal = authenticate(state, websocket.headers.get("authorization"))
    if principal.container_id != container_id:
        raise PermissionDeniedError(
            "a web channel is opened by its own container only: send that container's token"
        )
    with state.engine.connect() as conn:
        row = conn.execute(
            select(containers.c.function_id, containers.c.state).where(
                containers.c.id == container_id
            )
        ).first()
    if row is None or row.state == "stopped":
        raise AuthError("the container token belongs to a container that has stopped")
    return str(row.function_id)


@router.websocket("/v1/containers/{container_id}/channel")
async def web_channel(websocket: WebSocket, container_id: str) -> None:
    """Serve one container's web channel until either side closes it."""
    state: ServerState = websocket.app.state.crucible
    try:
        function_id = _admit(state, websocket, container_id)
        slots = int(websocket.query_params.get("slots", "1"))
        if not 1 <= slots <= _MAX_SLOTS:
            raise Error(f"slots must be between 1 and {_MAX_SLOTS}, got {slots}")
    except (Error, ValueError) as exc:
        reason = exc.message if isinstance(exc, Error) else f"bad slots: {exc}"
        log.info("web channel for %s refused: %s", container_id, reason)
        # Accepted only to say why (a close before accepting reaches the client as a bare
        # 403): nothing is ever handed on it.
        await websocket.accept()
        await websocket.close(code=1008, reason=reason[:120])
        return
    await websocket.accept()
    channel = Channel(container_id, function_id, slots, websocket.send_bytes)
    state.web.channels.attach(channel)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                continue
            try:
                state.web.channels.received(channel, data)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("web channel %s sent a bad frame: %s", container_id, exc)
    except WebSocketDisconnect:
        return
    finally:
        state.web.channels.detach(channel)
