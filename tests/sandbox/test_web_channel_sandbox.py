"""A web endpoint in the bwrap sandbox (network off) keeps its web channel through the
agent's relay socket (worker/web_channel.py dials ``CRUCIBLE_SERVER_SOCKET``): requests are
relayed on it, a request body over the inline limit included."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx

import app_web_channel
from harness import Exchange, wait_for


def test_a_sandboxed_endpoint_is_served_on_its_channel(sandboxed: Exchange, tenant: Any) -> None:
    app_web_channel.app.deploy(client=tenant)
    account = tenant.get("/v1/accounts/me")["name"]
    api = f"{sandboxed.url}/web/{account}/webchan/api"
    body = os.urandom(3 * 1024 * 1024)
    want = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    with httpx.Client(timeout=120) as http:
        http.get(f"{api}/produced", params={"key": "warm"})  # the container starts

        def relayed() -> bool:
            r = http.post(f"{api}/echo", content=body)
            assert r.status_code == 200 and r.json() == want, r.text
            return r.headers["x-crucible-call-id"].startswith("rq-")

        wait_for(relayed, 60, "a large request relayed on the sandboxed container's channel")
        with http.stream("GET", f"{api}/slow", params={"key": "s", "n": 5}) as s:
            assert s.headers["x-crucible-call-id"].startswith("rq-")
            assert b"".join(s.iter_bytes()) == b"".join(f"{i}\n".encode() for i in range(5))
