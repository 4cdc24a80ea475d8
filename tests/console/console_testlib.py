"""A browser-less console client for the in-process tests: its own cookie jar over the real
app (httpx.ASGITransport), signing in through the form like a person would."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))

from server_testlib import ServerUnderTest

__all__ = ["ConsoleClient", "csrf_of"]

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class ConsoleClient:
    """One person's browser: cookies kept, redirects not followed (tests look at them)."""

    def __init__(self, server: ServerUnderTest) -> None:
        self.server = server
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=server.app, raise_app_exceptions=False),
            base_url="http://test",
        )

    def close(self) -> None:
        self.server._loop.run_until_complete(self.client.aclose())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.server._loop.run_until_complete(self.client.get(path, **kwargs))

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> httpx.Response:
        return self.server._loop.run_until_complete(self.client.post(path, data=data, **kwargs))

    def sign_in(self, token: str) -> httpx.Response:
        form = self.get("/login")
        assert form.status_code == 200, form.text
        return self.post("/login", {"csrf": csrf_of(form.text), "token": token, "next": "/"})

    def form_token(self, path: str = "/") -> str:
        return csrf_of(self.get(path).text)
