"""Web endpoints through the exchange's gateway, with real processes: a token unless
public, JSON in and out, streaming responses, a 500 with the call id when the endpoint
raises, and a clear 404 for its owner once the deployment is stopped."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import crucible

import app_web
from harness import Exchange


def test_endpoints_through_the_gateway(exchange: Exchange) -> None:
    token = exchange.owner_token("webby")
    builder = exchange.client(token)
    try:
        _endpoints_through_the_gateway(exchange, token, builder)
    finally:
        builder.close()


def _endpoints_through_the_gateway(exchange: Exchange, token: str, builder: Any) -> None:
    app_web.app.deploy(client=builder)
    base = f"{exchange.url}/web/operator/web"
    # .remote() on a web endpoint names the URL it is served at (it printed "{server}/web/
    # {account}/..." placeholders though get_web_url() on the same handle knew it).
    hello = crucible.Function.from_name("web", "hello", client=builder)
    with pytest.raises(crucible.InvalidRequestError) as refused:
        hello.remote()
    assert f"call it over HTTP at {base}/hello/, not with .remote()" in str(refused.value)
    auth = {"authorization": f"Bearer {token}"}
    with httpx.Client(timeout=120) as http:
        # Not public: a token of the deployment's account is needed.
        assert http.get(f"{base}/hello/").status_code == 401
        stranger = exchange.new_account("stranger")
        r = http.get(f"{base}/hello/", headers={"authorization": f"Bearer {stranger}"})
        assert r.status_code == 404
        r = http.get(f"{base}/hello/", params={"name": "ada"}, headers=auth)
        assert r.status_code == 200 and r.json() == {"hello": "ada"}
        assert r.headers["x-crucible-call-id"].startswith("ca")

        # Public: no token; an ASGI app with its own routes.
        r = http.post(f"{base}/api/echo", json={"x": 1})
        assert r.status_code == 200 and r.json() == {"got": {"x": 1}}
        with http.stream("GET", f"{base}/api/count", params={"n": 5}) as s:
            assert s.status_code == 200
            assert "".join(s.iter_text()) == "0\n1\n2\n3\n4\n"
        r = http.get(f"{base}/api/boom")
        assert r.status_code == 500 and "x-crucible-call-id" in r.headers
        assert "the endpoint broke" not in r.text  # the traceback is the owner's only
        r = http.get(f"{base}/api/nowhere")
        assert r.status_code == 404  # the app's own 404

        # The exchange's cookies never reach a tenant's app (a console session would let it
        # act as the visitor), nor can it set them; the client's X-Forwarded-* are replaced.
        spoof = {
            "cookie": "crucible_session=secret; crucible_login=nonce; app=ok",
            "x-forwarded-for": "1.2.3.4",
            "x-forwarded-proto": "gopher",
        }
        r = http.get(f"{base}/api/seen", headers=spoof)
        assert r.status_code == 200, r.text
        seen = dict(r.json()["headers"])
        assert seen["cookie"] == "app=ok", seen
        assert "1.2.3.4" not in seen["x-forwarded-for"] and seen["x-forwarded-proto"] == "http"
        # Bytes reach the app as the client sent them: a UTF-8 header value, a raw path with
        # its escapes (they were encoded twice, and the path unescaped).
        r = http.get(f"{base}/api/se%65n", headers={"x-utf": "café".encode()})
        assert r.status_code == 200 and r.json()["raw_path"] == "/se%65n", r.text
        assert r.json()["utf"].encode("latin-1") == "café".encode(), r.json()
        r = http.get(f"{base}/api/hostile", params={"kind": "cookies"})
        set_cookies = r.headers.get_list("set-cookie")
        assert [c.split("=")[0] for c in set_cookies] == ["mine"], set_cookies
        # A response HTTP cannot carry is a 502 in the error shape, not a dropped connection.
        for kind in ("crlf", "status"):
            r = http.get(f"{base}/api/hostile", params={"kind": kind})
            assert r.status_code == 502 and r.json()["error"]["code"] == "bad_gateway", r.text
        r = http.get(f"{base}/api/hostile", params={"kind": "framing"})
        assert r.status_code == 200 and r.text == "ok"
        assert "transfer-encoding" not in r.headers, r.headers
        r = http.get(f"{base}/api/hostile", params={"kind": "empty"})
        assert r.status_code == 204 and r.content == b""

        # A tenant's page on the console's origin (server/shared_origin.py): it cannot take
        # the origin for a service worker, nor keep a console window it opens; a visitor
        # signed in to the console who does not own it gets it sandboxed (its own origin),
        # its owner as it is.
        r = http.get(f"{base}/api/hostile", params={"kind": "worker"})
        assert r.status_code == 200 and "service-worker-allowed" not in r.headers, r.headers
        assert "cross-origin-opener-policy" not in r.headers
        assert "content-security-policy" not in r.headers  # not signed in: nothing to take
        r = http.get(
            f"{base}/api/hostile", params={"kind": "worker"}, headers={"service-worker": "script"}
        )
        assert r.status_code == 403 and "CRUCIBLE_PORTS_DOMAIN" in r.text
        for who, sandboxed in ((stranger, True), (token, False)):
            session = _console_session(exchange.url, who)
            r = http.get(
                f"{base}/api/hostile",
                params={"kind": "worker"},
                headers={"cookie": f"crucible_session={session}"},
            )
            assert r.status_code == 200, r.text
            csp = r.headers.get("content-security-policy", "")
            assert csp.startswith("sandbox ") == sandboxed, (who == token, csp)
            assert "allow-same-origin" not in csp
            # Cookies the page set itself cannot hide the visitor's session: one a strict
            # parser gives up on, and one of the session's name on the page's own path.
            for jar in (
                f'prefs={{"theme":"dark"}}; crucible_session={session}',
                f"crucible_session=junk; crucible_session={session}",
            ):
                r = http.get(
                    f"{base}/api/hostile", params={"kind": "worker"}, headers={"cookie": jar}
                )
                csp = r.headers.get("content-security-policy", "")
                assert csp.startswith("sandbox ") == sandboxed, (jar, csp)
        # The console itself cuts off a window opened from such a page.
        assert http.get(f"{exchange.url}/login").headers["cross-origin-opener-policy"] == (
            "same-origin"
        )

        # A WebSocket: each message to the app and back through the exchange.
        ws_url = f"{base.replace('http://', 'ws://')}/api/shout"
        with connect(ws_url, open_timeout=60) as ws:
            ws.send("hello")
            assert ws.recv(timeout=60) == "HELLO"
            ws.send("again")
            assert ws.recv(timeout=60) == "AGAIN"
            ws.send("bye")
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=60)
        # Many messages ahead of the app: held back (a window in the store at a time), none
        # lost, in order. A message over 1 MiB closes the connection with 1009 (20 x 4 MB
        # from one anonymous client went into the store and ran the worker out of memory).
        with connect(ws_url, open_timeout=60) as ws:
            for i in range(300):
                ws.send(f"m{i}")
            assert [ws.recv(timeout=60) for _ in range(300)] == [f"M{i}" for i in range(300)]
            ws.send("x" * (1024 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=60)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

        # A refused WebSocket gets the same status and error body as a plain request
        # (it was a bare 403, whatever the reason).
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{base.replace('http://', 'ws://')}/hello/", open_timeout=60)
        assert refused.value.response.status_code == 401
        body = orjson.loads(refused.value.response.body or b"{}")
        assert body["error"]["code"] == "unauthorized", body
        with pytest.raises(InvalidStatus) as refused:
            connect(
                f"{base.replace('http://', 'ws://')}/hello/",
                open_timeout=60,
                additional_headers={"authorization": f"Bearer {stranger}"},
            )
        assert refused.value.response.status_code == 404

        builder.post("/v1/deployments/web/stop")
        r = http.get(f"{base}/api/count", headers=auth)  # the owner learns why
        assert r.status_code == 404 and "stopped" in r.json()["error"]["message"]
        # Anyone else gets one answer, whatever is missing (gateway tests: test_web_gateway).
        r = http.get(f"{base}/api/count")
        assert r.status_code == 401 and "stopped" not in r.text
        other = http.get(f"{exchange.url}/web/nobody/web/api/count")
        assert other.status_code == 401
        assert other.text.replace("/nobody/", "/operator/") == r.text  # the same words


def _console_session(url: str, token: str) -> str:
    """The console session cookie of signing in with ``token`` through the form (in a
    browser of its own: a cookie jar apart from ``http``'s)."""
    with httpx.Client(base_url=url, timeout=60) as browser:
        form = browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]*)"', form.text)
        assert csrf is not None, form.text
        r = browser.post("/login", data={"csrf": csrf.group(1), "token": token, "next": "/"})
        assert r.status_code == 303, r.text
        session = browser.cookies.get("crucible_session")
    assert session, r.headers
    return str(session)
