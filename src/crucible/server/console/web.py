"""The console's plumbing: templates, the session dependency, CSRF checks, the security
headers every console response carries, and errors rendered as pages.

Routers in ``pages/`` use :class:`ConsoleRoute` as their route class: a crucible ``Error``
(or a malformed query) raised by a service becomes an HTML page with the error's status
and message (never a 500 for a client's mistake), and a request without a session is sent
to the sign-in page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from crucible.errors import (
    Error,
    InvalidRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from crucible.server.api.responses import validation_message
from crucible.server.console import format as fmt
from crucible.server.services.sessions import ConsoleSession, read_session
from crucible.server.state import ServerState

__all__ = [
    "COOKIE",
    "SECURITY_HEADERS",
    "ConsoleRoute",
    "Session",
    "SignInRequired",
    "browser_error",
    "form_data",
    "get_session",
    "page",
    "state_of",
]

log = logging.getLogger("crucible.server.console")

COOKIE = "crucible_session"
HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024

# No inline script or style anywhere (scripts and styles are static files), nothing from
# other origins, and no framing: injected markup that slipped through would not run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    # A console window opened by another page (a tenant's, served on this origin without
    # CRUCIBLE_PORTS_DOMAIN) is cut off from it (server/shared_origin.py).
    "cross-origin-opener-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _shown(value: Any) -> Any:
    """Every value a page prints: text others chose shows its bidi overrides and hidden
    marks as escapes (format.visible); markup the templates made is left as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return fmt.visible(value)
    return value


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_shown,
)
_env.filters.update(
    usd=fmt.usd,
    dollars=fmt.dollars,
    when=fmt.when,
    ago=fmt.ago,
    duration=fmt.duration,
    rate=fmt.rate,
)


class SignInRequired(Exception):
    """No live session: pages redirect to /login, live streams answer 401."""


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.crucible
    return state


async def get_session(request: Request) -> ConsoleSession:
    state = state_of(request)
    with state.engine.connect() as conn:
        session = read_session(conn, request.cookies.get(COOKIE), state.clock.now_ms())
    if session is None:
        raise SignInRequired()
    request.state.console_session = session
    return session


Session = Annotated[ConsoleSession, Depends(get_session)]


def page(
    request: Request,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a page. Every page gets the request, the session (when signed in) and the
    navigation's current section."""
    session: ConsoleSession | None = getattr(request.state, "console_session", None)
    html = _env.get_template(template).render(
        request=request,
        session=session,
        principal=session.principal if session else None,
        csrf=session.csrf if session else "",
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def render_fragment(template: str, **context: Any) -> str:
    """A template's markup alone (the live tables send it over server-sent events)."""
    return _env.get_template(template).render(**context)


async def form_data(request: Request, session: ConsoleSession | None) -> Mapping[str, str]:
    """The fields of a posted form (``application/x-www-form-urlencoded``), after checking
    its CSRF token against the session's (when there is one)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidRequestError(
            "send this form as application/x-www-form-urlencoded (submit it from the console)"
        )
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PayloadTooLargeError(f"a console form is at most {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("the form is not valid UTF-8") from exc
    fields = {k: v[-1] for k, v in parsed.items()}
    if session is not None and not session.csrf_ok(fields.get("csrf")):
        raise PermissionDeniedError(
            "the form's security token is missing or stale; reload the page and submit again"
        )
    return fields


def _with_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    return page(request, "error.html", status_code=status, title=title, message=message)


def browser_error(request: Request, status: int, message: str) -> Response | None:
    """A console page for a browser's request that no route answered (a path trimmed from
    a console URL, a method a page does not take), with the console's headers; None for
    the API's clients (JSON) and the API's and the OpenAI API's paths."""
    path = request.url.path
    if path.startswith(("/v1/", "/openai/")) or "text/html" not in request.headers.get(
        "accept", ""
    ):
        return None
    title = "not_found" if status == 404 else "method_not_allowed"
    return _with_headers(_error_page(request, status, title, message))


class ConsoleRoute(APIRoute):
    """A console route: errors become pages, a missing session a redirect to sign in, and
    every response carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                if request.url.path.endswith("/stream") or request.method != "GET":
                    response = _error_page(
                        request, 401, "Signed out", "Your session ended; sign in again."
                    )
                else:
                    response = _login_redirect(request)
            except Error as exc:
                response = _error_page(request, exc.http_status, exc.code, exc.message)
            except RequestValidationError as exc:
                response = _error_page(
                    request, 400, "invalid_request", validation_message(exc.errors())
                )
            except Exception:
                log.exception("console page %s failed", request.url.path)
                response = _error_page(
                    request, 500, "internal", "Something went wrong on the server; see its log."
                )
            return _with_headers(response)

        return run
