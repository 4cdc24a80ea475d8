"""Dependencies shared by the routers: the server state, the caller, a transaction."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from crucible.errors import PermissionDeniedError
from crucible.server.auth import Principal
from crucible.server.services.accounts import authenticate
from crucible.server.state import ServerState

__all__ = ["Caller", "Container", "State", "caller", "container_caller", "get_state"]


async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.crucible
    return state


State = Annotated[ServerState, Depends(get_state)]


async def caller(request: Request) -> Principal:
    principal = authenticate(request.app.state.crucible, request.headers.get("authorization"))
    if principal.scope == "container":
        # Container tokens may only exchange inputs and read blobs (see their routers).
        path = request.url.path
        if not path.startswith("/v1/blobs/"):
            raise PermissionDeniedError("a container token cannot use this route")
    return principal


async def container_caller(request: Request) -> Principal:
    principal = authenticate(request.app.state.crucible, request.headers.get("authorization"))
    if principal.container_id is None:
        raise PermissionDeniedError("this route is for containers (container tokens) only")
    return principal


Caller = Annotated[Principal, Depends(caller)]
Container = Annotated[Principal, Depends(container_caller)]
