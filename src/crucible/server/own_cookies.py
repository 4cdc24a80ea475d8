"""The exchange's own cookies (the console's session, its sign-in form's nonce, a port link's
key): never passed to a tenant's app, and never set by one. A tenant's web endpoint or pod
port is served on the exchange's origin, so a visitor's browser sends it these cookies; an
app that saw them could act as the visitor, and one that set them could sign the visitor in
as someone else."""

from __future__ import annotations

from crucible.server.console.pages.auth import LOGIN_COOKIE
from crucible.server.console.web import COOKIE as CONSOLE_COOKIE

__all__ = ["OWN_COOKIES", "PORT_COOKIE", "cookie_name", "cookies_but_ours"]

PORT_COOKIE = "crucible_port_key"  # a port link's key, scoped to the port's path
OWN_COOKIES = frozenset({PORT_COOKIE, CONSOLE_COOKIE, LOGIN_COOKIE})


def cookie_name(set_cookie: str) -> str:
    """The name a ``Set-Cookie`` value sets."""
    return set_cookie.split(";", 1)[0].split("=", 1)[0].strip()


def cookies_but_ours(header: str | None) -> str:
    """The client's Cookie header without the exchange's own cookies: the app's own cookies
    (a notebook's ``_xsrf``) pass."""
    parts = [p.strip() for p in (header or "").split(";") if p.strip()]
    return "; ".join(p for p in parts if p.split("=", 1)[0].strip() not in OWN_COOKIES)
