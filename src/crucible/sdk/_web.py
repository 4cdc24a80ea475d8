"""Web endpoints: ``@crucible.fastapi_endpoint()`` and ``@crucible.asgi_app()``.

A deployed web function is served by the exchange's gateway at a stable URL,
``{server}/web/{account}/{deployment}/{function}/...``. Each request is a call: it is
queued, autoscaled, metered and logged like any other, and the response streams back as the
container produces it. The gateway requires a token of the deployment's account unless the
endpoint is declared ``public=True``. Put the decorator below ``@app.function``::

    @app.function()
    @crucible.fastapi_endpoint(method="GET")
    def hello(name: str = "world") -> dict[str, str]:
        return {"hello": name}

    @app.function()
    @crucible.asgi_app(public=True)
    def api():
        from fastapi import FastAPI
        web = FastAPI()
        ...
        return web
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from crucible.errors import InvalidRequestError
from crucible.sdk._checks import check_bool, check_choice

__all__ = ["WEB_ATTR", "asgi_app", "fastapi_endpoint"]

WEB_ATTR = "__crucible_web__"
F = TypeVar("F", bound=Callable[..., Any])
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _mark(kind: str, method: str, public: bool) -> Callable[[F], F]:
    check_bool(f"@crucible.{kind} public", public)

    def decorate(f: F) -> F:
        from crucible.sdk._functions import Function

        if isinstance(f, Function):
            raise InvalidRequestError(
                f"put @crucible.{kind}(...) below @app.function(...), next to the def"
            )
        setattr(f, WEB_ATTR, {"kind": kind, "method": method, "public": public})
        return f

    return decorate


def fastapi_endpoint(*, method: str = "GET", public: bool = False) -> Callable[[F], F]:
    """Serve the function as one HTTP route (its parameters are query or body parameters,
    as FastAPI reads them)."""
    upper = method.upper() if isinstance(method, str) else method
    check_choice("@crucible.fastapi_endpoint method", upper, _METHODS)
    return _mark("fastapi_endpoint", upper, public)


def asgi_app(*, public: bool = False) -> Callable[[F], F]:
    """The function returns an ASGI app (FastAPI, Starlette, ...), built once per container;
    the gateway serves every path under the endpoint's URL with it."""
    return _mark("asgi_app", "*", public)
