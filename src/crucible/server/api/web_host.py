"""Requests to web endpoints' own hosts (``{label}.{CRUCIBLE_PORTS_DOMAIN}``, see
api/web_origin.py): api/ports_host.py, which takes every host under the domain ahead of all
routing, hands those whose label names a web endpoint here. Each is the gateway's request
for that endpoint (api/gateway.py), its path and query as sent, with the gateway's checks; the
endpoint's app sees the host it was reached at.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from crucible.errors import NotFoundError, PayloadTooLargeError
from crucible.server.api import gateway
from crucible.server.api.responses import response_for_exception
from crucible.server.api.web_origin import OWN_HOST, function_hash, parse_label
from crucible.server.state import ServerState
from crucible.server.store.tables import accounts, apps, deployments, functions

__all__ = ["WebHosts"]

_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}  # the gateway's
_NAMES_TTL_S = 60.0  # a deployment id's names never change; a deleted one 404s anyway
_NAMES_MAX = 10_000


class WebHosts:
    """Serves requests to web endpoints' hosts (api/ports_host.py hands them here)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._names: dict[str, tuple[float, tuple[str, str, str] | None]] = {}

    def names(self, label: str) -> tuple[str, str, str] | None:
        """(account, deployment, function) a web label names; None when it names none."""
        known = self._names.get(label)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        named = parse_label(label)
        found = None if named is None else self._lookup(*named)
        if len(self._names) >= _NAMES_MAX:
            self._names.clear()
        self._names[label] = (time.monotonic() + _NAMES_TTL_S, found)
        return found

    def _lookup(self, deployment_id: str, fn_hash: str) -> tuple[str, str, str] | None:
        with self.state.engine.connect() as conn:
            row = conn.execute(
                select(deployments.c.name, accounts.c.name.label("account"))
                .join(accounts, accounts.c.id == deployments.c.account_id)
                .where(deployments.c.id == deployment_id)
            ).first()
            if row is None:
                return None
            names = conn.execute(
                select(functions.c.name)
                .join(apps, apps.c.id == functions.c.app_id)
                .where(apps.c.deployment_id == deployment_id)
                .distinct()
            ).scalars()
            for name in names:
                if function_hash(str(name)) == fn_hash:
                    return str(row.account), str(row.name), str(name)
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send, label: str) -> None:
        path = str(scope.get("path", "/")).lstrip("/")
        scope[OWN_HOST] = label  # the gateway serves it here rather than sending it here
        if scope["type"] == "websocket":
            websocket = WebSocket(scope, receive, send)
            found = self.names(label)
            if found is None:
                await websocket.close(code=1008, reason=_NO_ENDPOINT[:120])
                return
            await gateway.gateway_websocket(websocket, *found, path)
            return
        request = Request(scope, receive)
        try:
            found = self.names(label)
            if found is None:
                raise NotFoundError(_NO_ENDPOINT)
            limit = self.state.settings.max_request_bytes
            length = request.headers.get("content-length", "")
            if length.isascii() and length.isdigit() and int(length) > limit:
                raise PayloadTooLargeError(f"the request body is over {limit} bytes")
            if request.method not in _METHODS:
                raise NotFoundError(f"{request.method} is not served by a web endpoint")
            response = await gateway.gateway(*found, path, request)
        except Exception as exc:
            response = response_for_exception(exc)
        await response(scope, receive, send)


_NO_ENDPOINT = (
    "this host names no web endpoint: `crucible deployments` and the deploy's output give "
    "each endpoint's URL"
)
