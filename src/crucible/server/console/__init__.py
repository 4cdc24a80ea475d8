"""The web console: server-rendered pages at ``/`` for builders, hosts and operators.

Each page is a thin router in ``pages/`` over the same services the API uses; templates in
``templates/`` (Jinja2, autoescaped), a stylesheet and one small script in ``static/``.
Sign-in turns an API token into a session cookie (``services/sessions.py``); see
docs/console.md.
"""

from __future__ import annotations

from fastapi import APIRouter

from crucible.server.console.pages import (
    apps,
    auth,
    billing,
    calls,
    hosts,
    market,
    operator,
    static,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
for _module in (auth, static, apps, calls, billing, hosts, market, operator):
    router.include_router(_module.router)
