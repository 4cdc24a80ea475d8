"""Tenants' pages on the exchange's own origin, kept from acting as whoever opens them.

Web endpoints (``/web/...``) and published ports (``/pods/.../ports/...``, ``/ports/...``)
serve tenants' own HTTP responses. Without ``CRUCIBLE_PORTS_DOMAIN`` (api/web_origin.py,
docs/access.md) they are served on the origin of the web console and the API, where a
tenant's page opened by someone signed in to the console could read the console's pages as
them (and the forms' CSRF tokens, and post them: a probe set a victim's GPU price to a
cent), and a service worker it registered with ``Service-Worker-Allowed: /`` would see every
later request to the exchange, the console's sign-in form with the API token typed into it
included. On that origin:

- a request for a service worker's script (``Service-Worker: script``) is refused, and the
  app's ``Service-Worker-Allowed`` and ``Cross-Origin-Opener-Policy`` are dropped (the
  console's own opener policy then cuts a console window opened from the page off it);
- a visitor signed in to the console (its session cookie, which the app never sees, comes
  with the request) who does not own the page gets it with ``Content-Security-Policy:
  sandbox`` without ``allow-same-origin``: the browser runs it in an origin of its own,
  which reads nothing of the exchange's; scripts, forms, pop-ups and downloads still work.
  The owner's own pages (a notebook in their own pod, which needs its cookies) are served
  as they are.

What needs an origin of its own for everyone (cookies and storage for visitors signed in to
the console, a service worker) works on the endpoint's or the port's own host once the
operator sets ``CRUCIBLE_PORTS_DOMAIN``. A request to a host under that domain is left as
its app sent it.
"""

from __future__ import annotations

from sqlalchemy import Connection, select
from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Scope, Send

from crucible.server.api.ports_origin import host_label, hostname_of
from crucible.server.console.web import COOKIE as CONSOLE_COOKIE
from crucible.server.services.sessions import read_session
from crucible.server.state import ServerState
from crucible.server.store.tables import accounts, containers, pods

__all__ = [
    "SANDBOX",
    "guarded_send",
    "is_tenant_content",
    "refuse_service_worker",
    "wants_worker",
]

# Everything a page needs to work as a page, except its own origin.
SANDBOX = (
    b"sandbox allow-scripts allow-forms allow-popups allow-popups-to-escape-sandbox "
    b"allow-modals allow-downloads"
)
_PREFIXES = ("/web/", "/ports/", "/pods/")
_DROPPED = frozenset({b"service-worker-allowed", b"cross-origin-opener-policy"})
_REFUSED = (
    b'{"error":{"code":"forbidden","message":"a service worker cannot be registered from a '
    b"tenant's page on the exchange's own origin; set CRUCIBLE_PORTS_DOMAIN to give each web "
    b'endpoint and port an origin of its own (docs/access.md)"}}'
)


def is_tenant_content(scope: Scope, domain: str) -> bool:
    """Whether ``scope`` (HTTP) asks for a tenant's page on the exchange's own origin
    (``domain``: the normalised ports domain, or ``""``)."""
    path: str = scope["path"]
    if not path.startswith(_PREFIXES):
        return False
    return not domain or host_label(hostname_of(scope), domain) is None


def wants_worker(scope: Scope) -> bool:
    """Whether the request fetches a service worker's script (``Service-Worker: script``)."""
    return any(
        name == b"service-worker" and value.strip().lower() == b"script"
        for name, value in scope["headers"]
    )


async def refuse_service_worker(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_REFUSED)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _REFUSED})


def _console_secrets(scope: Scope) -> list[str]:
    """Every value the request's cookies give the console's session cookie. Read pair by
    pair, leniently: the page's own cookies are its to choose (a JSON value, a space, one
    with no value), and a strict parser that stopped at the first it could not read served a
    signed-in visitor the page unsandboxed; and all of them, as a page may set one of the
    same name on its own path (sent first) to hide the real one."""
    found: list[str] = []
    for name, value in scope["headers"]:
        if name != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            key, sep, val = pair.partition("=")
            if sep and key.strip() == CONSOLE_COOKIE and val.strip():
                found.append(val.strip().strip('"'))
    return found


def _owner(conn: Connection, path: str) -> str | None:
    """The account id owning the page at ``path`` (``/web/ACCOUNT/...``, ``/pods/POD/...``,
    ``/ports/CONTAINER/...``), or None when there is none."""
    parts = path.split("/", 3)
    if len(parts) < 3 or not parts[2]:
        return None
    kind, name = parts[1], parts[2]
    if kind == "web":
        query = select(accounts.c.id).where(accounts.c.name == name)
    elif kind == "pods":
        query = select(pods.c.account_id).where(pods.c.id == name)
    else:
        query = select(containers.c.account_id).where(containers.c.id == name)
    found = conn.execute(query).scalar()
    return None if found is None else str(found)


def _stranger(state: ServerState, scope: Scope, secrets: list[str]) -> bool:
    """Whether a visitor signed in (by any of ``secrets``) does not own the page. One
    connection for the sessions and the owner, read once and only for a live session."""
    with state.engine.connect() as conn:
        now = state.clock.now_ms()
        accounts_in = {
            s.principal.account_id
            for s in (read_session(conn, secret, now) for secret in secrets[:8])
            if s is not None  # signed out, expired, or not a session: it opens nothing
        }
        return bool(accounts_in) and accounts_in != {_owner(conn, scope["path"])}


async def guarded_send(state: ServerState, scope: Scope, send: Send) -> Send:
    """``send`` for a tenant's page on the exchange's origin: headers dropped as above, and
    the sandbox added when the visitor is signed in to the console and not the page's
    owner."""
    secrets = _console_secrets(scope)
    sandbox = bool(secrets) and await run_in_threadpool(_stranger, state, scope, secrets)

    async def send_guarded(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _DROPPED]
            if sandbox:
                headers.append((b"content-security-policy", SANDBOX))
            message = {**message, "headers": headers}
        await send(message)

    return send_guarded
