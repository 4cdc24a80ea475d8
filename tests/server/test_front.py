"""The app's front (server/front.py): a web endpoint's HTTP request and the OpenAI API's model
requests are served before FastAPI's middleware and routing, with the same answers: the
gateway's one 401/404 for an endpoint nobody may see, OpenAI's error shape under /openai/,
the body limit. Everything else still goes through FastAPI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from server_testlib import ServerUnderTest, error_code


class _Spy:
    """FastAPI's middleware stack, recording the paths that reached it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope.get("path", ""))
        await self.app(scope, receive, send)


def _spied(server: ServerUnderTest) -> _Spy:
    spy = _Spy(server.app.build_middleware_stack())
    server.app.middleware_stack = spy  # type: ignore[assignment]
    return spy


def test_gateway_and_openai_requests_skip_fastapis_stack(
    make_server: Callable[..., ServerUnderTest],
) -> None:
    server = make_server(max_request_bytes=4096)
    alice = server.tenant("alice").token
    spy = _spied(server)

    r = server.request("GET", "/web/alice/nothing/here/")  # no token: the one 401
    assert r.status_code == 401 and error_code(r) == "unauthorized", r.text
    r = server.request("GET", "/web/alice/nothing/here/", token=alice)  # own: told why
    assert r.status_code == 404 and error_code(r) == "not_found", r.text

    chat = "/openai/v1/chat/completions"
    r = server.request("POST", chat, token=alice, content=b"{not json")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = server.request("POST", chat, content=b"{}")  # no API key
    assert r.status_code == 401 and r.json()["error"]["message"], r.text
    r = server.request("POST", chat, token=alice, content=b"x" * 5000)
    assert r.status_code == 413 and r.json()["error"]["message"], r.text
    r = server.request("POST", "/openai/v1/embeddings", token=alice, json={"model": "none"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    assert spy.paths == []

    # Other methods on those paths, and every other route, are FastAPI's.
    r = server.request("GET", chat, token=alice)
    assert r.status_code == 405, r.text
    assert server.request("GET", "/v1/accounts/me", token=alice).status_code == 200
    assert spy.paths == [chat, "/v1/accounts/me"]


def test_nothing_is_taken_early_with_a_ports_domain(
    make_server: Callable[..., ServerUnderTest],
) -> None:
    server = make_server(ports_domain="ports.example.test")
    spy = _spied(server)
    r = server.request("GET", "/web/alice/nothing/here/")
    assert r.status_code == 401, r.text
    assert spy.paths == ["/web/alice/nothing/here/"]
