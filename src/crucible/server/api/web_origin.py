"""Web endpoints on their own origin: ``{label}.{CRUCIBLE_PORTS_DOMAIN}`` (api/web_host.py
serves it; this module names it, and sends the path URL's browser requests there).

A web endpoint is tenant code. Served at ``/web/{account}/{deployment}/{function}/...`` on
the exchange's own origin, its pages share that origin with the console and the API: its
scripts can read the console's pages as whoever opens them, and it receives the console's
session cookie. With ``CRUCIBLE_PORTS_DOMAIN`` set (the one domain for user content: pods'
ports and web endpoints), each endpoint is served at a host of its own, as pods' ports are
(api/ports_host.py dispatches every host under the domain; this module serves the web
ones):

- the label is ``w`` + the deployment's id (without ``dp-``) + 10 base32 characters of the
  SHA-256 of the function's name: it cannot collide with a port's label (``{id}-{port}``
  always has a hyphen; this one never does), and cannot be spoofed (the deployment id is
  the exchange's, unique, and fixes the account and the deployment; a tenant naming a
  function only ever names its own deployment's);
- a request to that host is the gateway's request for that endpoint, path and query as
  sent, with the gateway's own checks (a private endpoint still needs the account's token);
- on the exchange's origin, ``/web/...`` answers a request that carries a token
  (``Authorization``: an API client, which a browser cannot be made to send) as before, and
  a CORS preflight for such a request; any other request, a browser's, is redirected (307:
  method and body kept) to the endpoint's host, and a WebSocket without a token is refused,
  naming the host URL.

The API and the CLI give the endpoint's URL (``FunctionInfo.web_url``): the host URL with the
domain set, else the path URL.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from crucible.server.api.ports_origin import check_domain, origin_of
from crucible.server.state import ServerState
from crucible.server.store.tables import accounts, apps, deployments

__all__ = [
    "OWN_HOST",
    "endpoint_url",
    "function_hash",
    "own_host_reason",
    "parse_label",
    "to_own_host",
    "web_label",
]

# Set in the ASGI scope of a request that came to an endpoint's own host (api/web_host.py).
OWN_HOST = "crucible.web_host"
_DEPLOYMENT = "dp-"  # a deployment's id (protocol/ids.py)
_HASH_CHARS = 10
_LABEL = re.compile(rf"^w([0-9a-z]{{8,40}})([a-z2-7]{{{_HASH_CHARS}}})$")


def function_hash(function: str) -> str:
    digest = hashlib.sha256(function.encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:_HASH_CHARS]


def web_label(deployment_id: str, function: str) -> str:
    """The DNS label of the endpoint ``function`` of the deployment ``deployment_id``."""
    return "w" + deployment_id.removeprefix(_DEPLOYMENT) + function_hash(function)


def parse_label(label: str) -> tuple[str, str] | None:
    """(deployment id, function hash) a web endpoint's label names; None for any other
    label."""
    m = _LABEL.match(label)
    return None if m is None else (_DEPLOYMENT + m.group(1), m.group(2))


def endpoint_url(
    state: ServerState, request: HTTPConnection, conn: Any, owner_id: str, fn: Any
) -> str:
    """Where the web endpoint ``fn`` (a function row of the owner's deployment) is served:
    its own host with ``CRUCIBLE_PORTS_DOMAIN`` set, else its path on this exchange."""
    row = conn.execute(
        select(deployments.c.id, deployments.c.name, accounts.c.name.label("account"))
        .join(apps, apps.c.deployment_id == deployments.c.id)
        .join(accounts, accounts.c.id == deployments.c.account_id)
        .where(apps.c.id == fn.app_id, deployments.c.account_id == owner_id)
    ).first()
    if row is None:
        return ""
    domain = state.settings.ports_domain
    if domain:
        return origin_of(request, check_domain(domain), web_label(row.id, fn.name)) + "/"
    base = str(request.base_url).rstrip("/")
    return f"{base}/web/{row.account}/{row.name}/{fn.name}/"


def _deployment_id(state: ServerState, fn: Any) -> str | None:
    with state.engine.connect() as conn:
        found = conn.execute(select(apps.c.deployment_id).where(apps.c.id == fn.app_id)).scalar()
    return None if found is None else str(found)


def to_own_host(state: ServerState, request: Request, fn: Any, path: str) -> Response | None:
    """With the user-content domain set, a request to ``/web/...`` without a token goes to
    the endpoint's own host (307); None: serve it here (a token's, one on its own host
    already, or no domain)."""
    if OWN_HOST in request.scope or "authorization" in request.headers:
        return None
    if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
        return None  # a CORS preflight (never with a token) for a request that will carry one
    deployment_id = _deployment_id(state, fn)
    if deployment_id is None:
        return None
    domain = check_domain(state.settings.ports_domain)
    origin = origin_of(request, domain, web_label(deployment_id, fn.name))
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{origin}/{path}{query}", 307)


def own_host_reason(state: ServerState, websocket: WebSocket, fn: Any, path: str) -> str | None:
    """Why a WebSocket without a token to ``/web/...`` is refused with the domain set (it
    belongs on the endpoint's host), or None to serve it here."""
    if not state.settings.ports_domain or OWN_HOST in websocket.scope:
        return None
    if "authorization" in websocket.headers:
        return None
    deployment_id = _deployment_id(state, fn)
    if deployment_id is None:
        return None
    domain = check_domain(state.settings.ports_domain)
    url = origin_of(websocket, domain, web_label(deployment_id, fn.name)).replace("http", "ws", 1)
    reason = f"served on its own host: {url}/{path}"
    return reason if len(reason) <= 120 else "served on its own host (crucible deployments)"
