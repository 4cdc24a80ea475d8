"""Signing in with an API token (a session cookie) and signing out."""

from __future__ import annotations

import hmac
import re
import secrets

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from crucible.errors import AuthError, PermissionDeniedError
from crucible.server.console.web import COOKIE, ConsoleRoute, form_data, page, state_of
from crucible.server.services.sessions import end_session, read_session, sign_in

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

LOGIN_COOKIE = "crucible_login"  # the sign-in form's CSRF token (double-submit)


# A path on this server: no scheme or host, no backslash or control character (browsers drop
# tabs and newlines, so "/\t/evil" would become "//evil", another origin).
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server, else the console's home."""
    if not target or len(target) > 2000 or not _LOCAL_PATH.fullmatch(target):
        return "/"
    return target


def _login_form(request: Request, status: int = 200, error: str = "") -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = page(
        request,
        "login.html",
        status_code=status,
        login_csrf=nonce,
        next=_safe_next(request.query_params.get("next")),
        error=error,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


@router.get("/login")
async def login_page(request: Request) -> Response:
    state = state_of(request)
    with state.engine.connect() as conn:
        if read_session(conn, request.cookies.get(COOKIE), state.clock.now_ms()) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    state = state_of(request)
    fields = await form_data(request, None)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, fields.get("csrf", "")):
        return _login_form(
            request, 403, "The sign-in form expired; it has been reloaded, submit it again."
        )
    lifetime_ms = int(state.settings.console_session_hours * 3_600_000)
    try:
        with state.engine.begin() as conn:
            secret, _ = sign_in(
                conn, state, fields.get("token", ""), state.clock.now_ms(), lifetime_ms
            )
    except (AuthError, PermissionDeniedError) as exc:
        return _login_form(request, exc.http_status, exc.message)
    response = RedirectResponse(_safe_next(fields.get("next")), status_code=303)
    response.set_cookie(
        COOKIE,
        secret,
        max_age=lifetime_ms // 1000,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    state = state_of(request)
    secret = request.cookies.get(COOKIE)
    with state.engine.connect() as conn:
        session = read_session(conn, secret, state.clock.now_ms())
    if session is not None:
        await form_data(request, session)  # a forged sign-out is refused too
        with state.engine.begin() as conn:
            end_session(conn, secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
