"""A tiny HTTP client (urllib, JSON in and out) for the examples that talk to the exchange
the way a program in any language would: no Crucible SDK, just a URL and a token.

Where the exchange is: ``CRUCIBLE_SERVER_URL`` and ``CRUCIBLE_TOKEN`` when set, otherwise
the ``client.json`` that ``crucible up`` writes in ``$CRUCIBLE_HOME`` (``~/.crucible``). From
a shell: ``SERVER=$(jq -r .server_url ~/.crucible/client.json)`` and
``TOKEN=$(jq -r .token ~/.crucible/client.json)``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class Exchange:
    """``get``/``post`` JSON with the token; each request is printed as a curl command."""

    def __init__(self, server_url: str, token: str, *, echo: bool = True) -> None:
        self.server_url = server_url.rstrip("/")
        self.token = token
        self.echo = echo

    @classmethod
    def from_environment(cls) -> Exchange:
        url = os.environ.get("CRUCIBLE_SERVER_URL", "")
        token = os.environ.get("CRUCIBLE_TOKEN", "")
        if not (url and token):
            home = Path(os.environ.get("CRUCIBLE_HOME", "~/.crucible")).expanduser()
            saved = json.loads((home / "client.json").read_text())
            url, token = url or saved["server_url"], token or saved["token"]
        return cls(url, token)

    def request(
        self, method: str, path: str, body: Any = None, *, token: bool = True
    ) -> tuple[int, Any]:
        """(status, decoded JSON body) for ``method path``; errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {self.token}"
        if self.echo:
            auth = ' -H "authorization: Bearer $TOKEN"' if token else ""
            sent = (
                f" -H 'content-type: application/json' -d '{json.dumps(body)}'"
                if body is not None
                else ""
            )
            print(f'$ curl -s -X {method}{auth}{sent} "$SERVER{path}"')
        req = urllib.request.Request(
            self.server_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, **kw: Any) -> Any:
        return self._ok(*self.request("GET", path, **kw))

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._ok(*self.request("POST", path, {} if body is None else body, **kw))

    @staticmethod
    def _ok(status: int, body: Any) -> Any:
        if status >= 400:
            raise RuntimeError(f"HTTP {status}: {body}")
        return body
