"""A database that does not answer for a moment (a PostgreSQL restart, a failover) is a 503
``store_unavailable`` with Retry-After, which clients retry, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from server_testlib import ServerUnderTest, error_code


def test_a_store_that_does_not_answer_is_a_retryable_503(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = server.tenant("alice").token
    server.new_app(token)  # the token is known (and cached) before the outage

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    for engine in {server.state.engine, server.state.read_engine}:
        monkeypatch.setattr(engine, "connect", down)
        monkeypatch.setattr(engine, "begin", down)
    for method, path in (("GET", "/healthz"), ("GET", "/v1/apps"), ("POST", "/v1/apps")):
        body = {"name": "x"} if method == "POST" else None
        r = server.request(method, path, token=token, json=body)
        assert r.status_code == 503, (path, r.text)
        assert error_code(r) == "store_unavailable" and r.headers["retry-after"] == "1"
        assert "database is not answering" in r.json()["error"]["message"]
    monkeypatch.undo()
    assert server.request("GET", "/healthz").status_code == 200


def test_a_full_store_says_so(server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk was answered as a store "restarting or failing over?", and the SDK said
    "start one with `crucible up`": only the server's log had the cause."""
    token = server.tenant("alice").token
    server.new_app(token)

    def full(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database or disk is full"))

    monkeypatch.setattr(server.state.engine, "begin", full)
    r = server.request("POST", "/v1/apps", token=token, json={"name": "x"})
    assert r.status_code == 503 and error_code(r) == "store_unavailable"
    assert "disk is full" in r.json()["error"]["message"], r.text


def test_an_outage_is_answered_without_reraising_into_the_http_servers_log(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answered 503 and then re-raised to the HTTP server, which logged a whole traceback for
    each: one per health check, every second, for the length of the outage."""
    import asyncio

    import httpx

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    for engine in {server.state.engine, server.state.read_engine}:
        monkeypatch.setattr(engine, "connect", down)
        monkeypatch.setattr(engine, "begin", down)

    async def check() -> int:
        transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/healthz")).status_code

    assert asyncio.run(check()) == 503  # raised out of the app before
