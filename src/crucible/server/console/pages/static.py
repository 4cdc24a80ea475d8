"""The console's static files (its stylesheet, its one script, the icon): read once from the
package, served with their type and a hash for revalidation. No directory listing, no paths
outside the folder: only the names found there at start-up exist."""

from __future__ import annotations

import hashlib
from functools import cache

from fastapi import APIRouter, Request, Response

from crucible.errors import NotFoundError
from crucible.server.console.web import HERE, ConsoleRoute

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@cache
def _files() -> dict[str, tuple[bytes, str, str]]:
    found = {}
    for path in (HERE / "static").iterdir():
        if path.is_file() and path.suffix in _TYPES:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            found[path.name] = (body, _TYPES[path.suffix], etag)
    return found


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> Response:
    found = _files().get(name)
    if found is None:
        raise NotFoundError(f"no static file {name!r}")
    body, kind, etag = found
    headers = {"etag": etag, "cache-control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=kind, headers=headers)
