"""Web endpoints off the exchange's origin (api/web_origin.py, api/web_host.py): with
``CRUCIBLE_PORTS_DOMAIN`` set, each endpoint is served at ``{label}.{domain}``; its path URL
on the exchange's origin sends a browser's request there (307) and serves only requests that
carry a token; the API gives the host URL. In process on SQLite and PostgreSQL, with this
test as the endpoint's worker (its container's exchange)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from starlette.websockets import WebSocket

from crucible.protocol import json_payload
from crucible.protocol.accounts import Scope
from crucible.protocol.web import encode_response
from crucible.server.api.ports_origin import ports_target
from crucible.server.api.web_origin import OWN_HOST, own_host_reason, parse_label, web_label
from crucible.server.auth import Principal
from crucible.server.services.deployments import current_function

from server_testlib import MakeServer, ServerUnderTest

DOMAIN = "user.localhost"


def _deploy(server: ServerUnderTest, token: str) -> dict[str, str]:
    """The deployment ``site`` with a public endpoint ``pub`` and a private one ``priv``;
    their function ids."""
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "site"})
    bundle = server.put_blob(token)
    specs = [
        {
            "name": name,
            "code": {"bundle": bundle, "module": "m", "qualname": name},
            "web": {"kind": "asgi_app", "method": "*", "public": public},
        }
        for name, public in (("pub", True), ("priv", False))
    ]
    made = server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": specs}
    )
    server.ok(
        "POST", "/v1/deployments/site/activate", token=token, json={"app_id": started["app_id"]}
    )
    return {f["name"]: f["id"] for f in made}


async def _serve_one(server: ServerUnderTest, container: str, ctr_token: str) -> None:
    """Answer one request as the endpoint's app: the path it saw, as JSON."""
    client = server._client
    headers = {"authorization": f"Bearer {ctr_token}"}
    url = f"/v1/containers/{container}/exchange"
    got = await client.post(url, headers=headers, json={"want": 1, "wait_s": 30})
    [taken] = got.json()["inputs"]
    raw = base64.b64decode(taken["args"]["data"])
    [http] = json_payload.decode(raw)["args"]
    seen = {"path": http["path"], "headers": http["headers"]}
    parts = [
        orjson.dumps({"status": 200, "headers": [["content-type", "application/json"]]}),
        orjson.dumps({"body": base64.b64encode(orjson.dumps(seen)).decode(), "more": False}),
    ]
    output = {
        "call_id": taken["call_id"],
        "attempt": taken["attempt"],
        "status": "succeeded",
        "result": {"data": base64.b64encode(encode_response(parts)).decode()},
    }
    done = await client.post(url, headers=headers, json={"outputs": [output], "want": 0})
    assert done.status_code == 200, done.text


def _served(
    server: ServerUnderTest,
    container: str,
    ctr_token: str,
    path: str,
    headers: dict[str, str],
    method: str = "GET",
) -> Any:
    async def both() -> Any:
        worker = asyncio.create_task(_serve_one(server, container, ctr_token))
        r = await server._client.request(method, path, headers=headers)
        await worker
        return r

    return server._loop.run_until_complete(both())


def test_labels_cannot_collide_with_ports_or_each_other() -> None:
    a = web_label("dp-01m91qm0974qsrwrkvvfmk", "serve")
    assert a.startswith("w") and "-" not in a and len(a) <= 63
    assert parse_label(a) == ("dp-01m91qm0974qsrwrkvvfmk", a[-10:])
    assert ports_target(f"{a}.{DOMAIN}", DOMAIN) is True  # never read as a pod's port
    assert parse_label("pd-01m91qm0974qsrwrkvvfmk-8888") is None
    others = {
        web_label("dp-01m91qm0974qsrwrkvvfmm", "serve"),
        web_label("dp-01m91qm0974qsrwrkvvfmk", "serve2"),
        web_label("dp-01m91qm0974qsrwrkvvfmk", "Serve"),
    }
    assert a not in others and len(others) == 3


def test_endpoints_are_served_on_their_own_host(make_server: MakeServer) -> None:
    server = make_server(ports_domain=DOMAIN, web_relay=False)
    owner = server.tenant("webby")
    ids = _deploy(server, owner.token)
    host = server.register_host(server.tenant("webby", Scope.HOST).token)
    container, ctr_token = server.place_container(ids["pub"], host)

    info = server.ok("GET", "/v1/deployments/site/functions/pub", token=owner.token)
    url = info["web_url"]
    assert url.startswith("http://w") and url.endswith(f".{DOMAIN}/"), url
    own_host = url.removeprefix("http://").rstrip("/")
    plain = server.ok("GET", "/v1/deployments/site/functions/priv", token=owner.token)
    assert plain["web_url"] != url and plain["web_url"].endswith(f".{DOMAIN}/")

    # A browser at the path URL is sent to the endpoint's host, path and query kept.
    r = server.request("GET", "/web/webby/site/pub/a/b?q=1")
    assert r.status_code == 307, r.text
    assert r.headers["location"] == f"http://{own_host}/a/b?q=1"
    # POST keeps its method and body through a 307 (the client sends them again).
    r = server.request("POST", "/web/webby/site/pub/form", content=b"x=1")
    assert r.status_code == 307 and r.headers["location"] == f"http://{own_host}/form"

    # A CORS preflight (which never carries the token its request will) is not redirected.
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
    r = _served(server, container, ctr_token, "/web/webby/site/pub/form", preflight, "OPTIONS")
    assert r.status_code == 200 and r.json()["path"] == "/form"
    # The host serves the endpoint: the app sees the path as sent.
    r = _served(server, container, ctr_token, "/a/b?q=1", {"host": own_host})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/a/b"

    # An API client (a token) is still served at the path URL, not redirected.
    auth = {"authorization": f"Bearer {owner.token}"}
    r = _served(server, container, ctr_token, "/web/webby/site/pub/c", auth)
    assert r.status_code == 200 and r.json()["path"] == "/c"

    # A private endpoint's host still needs the account's token; a stranger learns nothing.
    priv_host = plain["web_url"].removeprefix("http://").rstrip("/")
    r = server.request("GET", "/x", headers={"host": priv_host})
    assert r.status_code == 401, r.text
    assert server.request("GET", "/web/webby/site/priv/x").status_code == 401
    # A label that names no endpoint, and the exchange's API, are not served on that domain.
    fake = web_label("dp-01m91qm0974qsrwrkvvfmk", "pub")
    r = server.request("GET", "/", headers={"host": f"{fake}.{DOMAIN}"})
    assert r.status_code == 404 and "no web endpoint" in r.json()["error"]["message"]
    r = _served(server, container, ctr_token, "/v1/accounts/me", {"host": own_host, **auth})
    assert r.json()["path"] == "/v1/accounts/me"  # the endpoint's answer, not the API's


def test_without_the_domain_the_path_url_serves_as_before(server: ServerUnderTest) -> None:
    owner = server.tenant("webby")
    _deploy(server, owner.token)
    info = server.ok("GET", "/v1/deployments/site/functions/pub", token=owner.token)
    assert info["web_url"] == "http://test/web/webby/site/pub/"
    r = server.request("GET", "/web/webby/site/priv/x")
    assert r.status_code == 401  # no redirect: the gateway's own answer


def test_a_websocket_without_a_token_is_refused_at_the_path_url(make_server: MakeServer) -> None:
    server = make_server(ports_domain=DOMAIN)
    owner = server.tenant("webby")
    _deploy(server, owner.token)
    with server.state.engine.connect() as conn:
        fn = current_function(conn, owner_of(owner.account_id), "site", "pub")
    url = server.ok("GET", "/v1/deployments/site/functions/pub", token=owner.token)["web_url"]

    def socket(headers: list[tuple[bytes, bytes]], **scope: Any) -> WebSocket:
        whole = {
            "type": "websocket",
            "path": "/web/webby/site/pub/ws",
            "headers": [(b"host", b"test"), *headers],
            "scheme": "ws",
            "server": ("test", 80),
            "query_string": b"",
            **scope,
        }
        return WebSocket(whole, _never, _never)

    reason = own_host_reason(server.state, socket([]), fn, "ws")
    assert reason is not None and url.replace("http://", "ws://") + "ws" in reason
    assert len(reason) <= 123  # a close reason's limit
    token = [(b"authorization", f"Bearer {owner.token}".encode())]
    assert own_host_reason(server.state, socket(token), fn, "ws") is None
    assert own_host_reason(server.state, socket([], **{OWN_HOST: "w"}), fn, "ws") is None


async def _never(*_: Any) -> Any:
    raise AssertionError("not used")


def owner_of(account_id: str) -> Principal:
    return Principal(account_id=account_id, scope="user")


def test_the_app_sees_the_request_as_a_reverse_proxy_passes_it(make_server: MakeServer) -> None:
    """The Host the client used and X-Forwarded-* written by the gateway (what a client sent
    under those names is replaced; X-Forwarded-For is the client's address alone, as the
    server saw it); never the token."""
    server = make_server(ports_domain=DOMAIN, web_relay=False)
    owner = server.tenant("webby")
    ids = _deploy(server, owner.token)
    host = server.register_host(server.tenant("webby", Scope.HOST).token)
    container, ctr_token = server.place_container(ids["pub"], host)
    forged = {
        "x-forwarded-host": "evil.example",
        "x-forwarded-prefix": "/evil",
        "x-forwarded-for": "10.9.9.9",
    }
    auth = {"authorization": f"Bearer {owner.token}"}
    r = _served(server, container, ctr_token, "/web/webby/site/pub/p", {**auth, **forged})
    assert r.status_code == 200, r.text
    seen = dict(map(tuple, r.json()["headers"]))
    assert "authorization" not in seen
    assert seen["host"] == "test" and seen["x-forwarded-host"] == "test"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-prefix"] == "/web/webby/site/pub"
    assert seen["x-forwarded-for"] and "10.9.9.9" not in seen["x-forwarded-for"], seen
    assert [k for k, _ in r.json()["headers"]].count("x-forwarded-host") == 1

    # On the endpoint's own host the app is at the root: no prefix.
    url = server.ok("GET", "/v1/deployments/site/functions/pub", token=owner.token)["web_url"]
    own_host = url.removeprefix("http://").rstrip("/")
    r = _served(server, container, ctr_token, "/q", {"host": own_host, **forged})
    seen = dict(map(tuple, r.json()["headers"]))
    assert seen["host"] == own_host and seen["x-forwarded-host"] == own_host
    assert "x-forwarded-prefix" not in seen
