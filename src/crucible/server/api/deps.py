"""Dependencies shared by the routers: the server state and the caller, by token scope.

Scopes (see protocol.accounts.Scope): ``admin`` may do everything a builder may, plus operate
the exchange; ``user`` is a builder; ``host`` is an agent; container tokens belong to one
running container. Each router names the kind of caller it accepts.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import select

from crucible.errors import AuthError, InvalidRequestError, PermissionDeniedError
from crucible.server.auth import Principal
from crucible.server.services.accounts import authenticate
from crucible.server.services.request_keys import KEY_PATTERN
from crucible.server.state import ServerState
from crucible.server.store.tables import containers, functions

__all__ = [
    "BlobReader",
    "Builder",
    "CallMaker",
    "Caller",
    "Container",
    "HostAgent",
    "Member",
    "RequestKey",
    "State",
    "get_state",
]


async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.crucible
    return state


State = Annotated[ServerState, Depends(get_state)]


def _request_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Send the request again with the same key to get its first answer "
            "instead of making a second one (kept 24 hours; 1-128 printable ASCII characters, "
            "no spaces).",
        ),
    ] = None,
) -> str | None:
    if key is not None and not re.fullmatch(KEY_PATTERN, key):
        raise InvalidRequestError(
            "the Idempotency-Key header must be 1-128 printable ASCII characters without "
            "spaces (a UUID, say): one key per request, the same key only to send that "
            "request again"
        )
    return key


# The Idempotency-Key header of a route that makes something anew (services/request_keys.py).
RequestKey = Annotated[str | None, Depends(_request_key)]


def _principal(request: Request) -> Principal:
    return authenticate(request.app.state.crucible, request.headers.get("authorization"))


async def any_token(request: Request) -> Principal:
    """Any account token (admin, user or host); not a container's."""
    principal = _principal(request)
    if principal.scope == "container":
        raise PermissionDeniedError("a container token cannot use this route")
    return principal


async def builder(request: Request) -> Principal:
    principal = _principal(request)
    if principal.scope not in ("admin", "user"):
        raise PermissionDeniedError(
            f"this route needs a user token (an admin token for the operator's routes: "
            f"accounts, credits, audit, metrics), not a {principal.scope} token (create one "
            "with `crucible token create`)"
        )
    return principal


async def host_agent(request: Request) -> Principal:
    principal = _principal(request)
    if principal.scope not in ("admin", "host"):
        raise PermissionDeniedError(
            f"this route is for host agents; a {principal.scope} token cannot use it "
            "(agents need `crucible token create --scope host`)"
        )
    return principal


async def container(request: Request) -> Principal:
    principal = _principal(request)
    if principal.container_id is None:
        raise PermissionDeniedError("this route is for containers (container tokens) only")
    return principal


async def blob_reader(request: Request) -> Principal:
    """Builders, and containers while they run (a stopped container's token reads nothing)."""
    return _builder_or_running_container(request, "read or write blobs")


async def member(request: Request) -> Principal:
    """Builders, and the account's containers while they run: shared objects (dicts, queues,
    volumes)."""
    return _builder_or_running_container(request, "use dicts, queues or volumes")


async def call_maker(request: Request) -> Principal:
    """Builders, and running containers calling the functions of their own app (a function
    calling another): a container's principal carries its app (``app_id``), and a container
    reads and cancels only the calls it made (services/calls.made_by)."""
    return _builder_or_running_container(request, "call functions")


def _builder_or_running_container(request: Request, what: str) -> Principal:
    principal = _principal(request)
    if principal.container_id is not None:
        state: ServerState = request.app.state.crucible
        with state.engine.connect() as conn:
            row = conn.execute(
                select(containers.c.state, functions.c.app_id)
                .join(functions, functions.c.id == containers.c.function_id)
                .where(containers.c.id == principal.container_id)
            ).first()
        if row is None or row.state == "stopped":
            raise AuthError("the container token belongs to a container that has stopped")
        return replace(principal, app_id=row.app_id)
    if principal.scope not in ("admin", "user"):
        raise PermissionDeniedError(f"a {principal.scope} token cannot {what}")
    return principal


Caller = Annotated[Principal, Depends(any_token)]
Builder = Annotated[Principal, Depends(builder)]
CallMaker = Annotated[Principal, Depends(call_maker)]
HostAgent = Annotated[Principal, Depends(host_agent)]
Container = Annotated[Principal, Depends(container)]
BlobReader = Annotated[Principal, Depends(blob_reader)]
Member = Annotated[Principal, Depends(member)]
