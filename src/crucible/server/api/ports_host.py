"""User content on its own origin: published ports at ``{pod_id}-{port}.{CRUCIBLE_PORTS_DOMAIN}``
(a container's port, ``/v1/containers/{id}/ports/{port}/link``: ``{container_id}-{port}...``),
and web endpoints at ``{label}.{CRUCIBLE_PORTS_DOMAIN}`` (handed to api/web_host.py).

With ``CRUCIBLE_PORTS_DOMAIN`` set, every request whose ``Host`` is under that domain goes
to :class:`PortsHost` ahead of all routing: the host's first label names the pod and the
port, the path and query go to the pod's port unchanged, and nothing else of the exchange
answers there (no ``/v1/...``, no console, no web gateway): a pod's page cannot reach the
API by a relative URL, and its origin is not the console's, so the browser keeps the
console's host-only session cookie away from it and the same-origin policy keeps its
scripts from reading the console's pages.

The credentials are the path URL's (``api/ports.py``): the account's token, or the port's
secret link (``?crucible_key=``), whose cookie is host-only (no ``Domain``) and scoped to
``/`` of that host. Requests for other hosts reach the exchange as before.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from crucible.errors import NotFoundError, PayloadTooLargeError
from crucible.server.api import ports, ports_ws
from crucible.server.api.ports_origin import check_domain, host_label, hostname_of, ports_target
from crucible.server.api.responses import response_for_exception
from crucible.server.api.web_host import WebHosts
from crucible.server.api.web_origin import parse_label
from crucible.server.services import pod_ports
from crucible.server.state import ServerState

__all__ = ["PortsHost"]


class PortsHost:
    """ASGI middleware, outermost: requests to a ports host go to the pod's port and
    nowhere else; every other request goes on to the exchange untouched."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.domain = check_domain(state.settings.ports_domain)
        self.web = WebHosts(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hostname = hostname_of(scope)
        label = host_label(hostname, self.domain)
        if label is not None and parse_label(label) is not None:  # a web endpoint's host
            await self.web.serve(scope, receive, send, label)
            return
        found = ports_target(hostname, self.domain)
        if found is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, found)
            return
        request = Request(scope, receive)
        try:
            if found is True or found is False:
                raise NotFoundError(_NO_PORT)
            response = await self._http(request, *found)
        except Exception as exc:
            response = response_for_exception(exc)
        await response(scope, receive, send)

    async def _http(self, request: Request, pod_id: str, port: int) -> Response:
        state = self.state
        if request.method not in ports.METHODS:
            raise NotFoundError(f"{request.method} is not relayed to a published port")
        limit = state.settings.max_request_bytes
        length = request.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise PayloadTooLargeError(f"the request body is over {limit} bytes")
        if not pod_id.startswith(_POD):
            return await self._container(request, pod_id, port)
        who, via_key = ports.pod_caller(state, request, pod_id, port)
        with state.engine.connect() as conn:
            target = pod_ports.pod_port(conn, who, pod_id, port, by_name=False)
            container_id = pod_ports.running_container(conn, target)
        return await ports.forward(
            state,
            request,
            ports.pod_upstream(state, request, who, via_key, pod_id, port, container_id, ""),
        )

    async def _container(self, request: Request, container_id: str, port: int) -> Response:
        """A container's port (``/v1/containers/{id}/ports/{port}/link``): the path as
        sent, the Host it has at its path URL."""
        state = self.state
        who, via_key = ports.caller(state, request, container_id, port)
        return await ports.forward(
            state,
            request,
            ports.Upstream(
                who=who,
                container_id=container_id,
                port=port,
                path=ports.raw_path(request),
                host=f"127.0.0.1:{port}",
                cookie_path="/",
                cookie=ports.port_key(state.secret, container_id, port) if via_key else None,
            ),
        )

    async def _websocket(
        self, scope: Scope, receive: Receive, send: Send, found: tuple[str, int] | bool
    ) -> None:
        websocket = WebSocket(scope, receive, send)
        if found is True or found is False:
            await ports_ws.deny(websocket, NotFoundError(_NO_PORT))
            return
        owner, port = found
        if owner.startswith(_POD):
            await ports_ws.serve_pod(websocket, owner, port, own_host=True)
        else:
            await ports_ws.serve_container(websocket, owner, port)


_POD = "pd-"  # a pod's id (protocol/ids.py); any other label names a container
_NO_PORT = (
    "this host names no published port: a pod's port is at {pod_id}-{port}.<ports domain> "
    "(`crucible pod show NAME` lists its URLs)"
)
