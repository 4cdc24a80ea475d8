"""Published ports on their own origin (``CRUCIBLE_PORTS_DOMAIN``), end to end on a real
server, agent and worker: a request whose ``Host`` is ``{pod}-{port}.ports.localhost``
reaches the pod's port with its path unchanged and nothing of the exchange answers there
(``/v1/...``, ``/console``, ``/login``: the pod's app, or a 404); the secret link points at
that host and its cookie is host-only; the path URL redirects there; refusals are the path
URL's (401, 404 for another account, an unknown pod, a port not published).

httpx connects to the exchange's loopback address and names the ports host in ``Host``,
as a browser resolving ``*.localhost`` to loopback (or wildcard DNS) would."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import crucible
from crucible.testing import free_port, wait_for

from harness import Exchange

DOMAIN = "ports.localhost"
# A web app that answers every request (any method the relay passes) with what it saw.
ECHO_APP = r"""
import http.server, json, os, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_PUT = do_DELETE = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("pod-ports-host")
    exchange = Exchange(root, f"sqlite:///{root / 'store.db'}", CRUCIBLE_PORTS_DOMAIN=DOMAIN)
    exchange.start_server()
    try:
        exchange.start_agent("host-a")
        yield exchange
    finally:
        exchange.close()


@pytest.fixture(scope="module")
def web(ex: Exchange) -> Iterator[tuple[str, Any, int, int]]:
    token = ex.owner_token("owner")
    client = ex.client(token)
    port, tcp_port = free_port(), free_port()
    pod = crucible.Pod.create(
        "web",
        command=f"exec python -c {shlex.quote(ECHO_APP)} {port}",
        ports=[f"{port}/http", f"{tcp_port}/tcp"],
        client=client,
    )
    try:
        assert pod.wait("running", "failed", timeout_s=120).state == "running", pod.info()
        auth = {"Authorization": f"Bearer {token}"}

        def up() -> bool:
            try:
                return _get(ex, host(ex, pod.id, port), "/", auth).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout_s=120, what="the pod's web app")
        yield token, pod, port, tcp_port
    finally:
        pod.delete()
        client.close()


def host(ex: Exchange, pod_id: str, port: int) -> str:
    return f"{pod_id}-{port}.{DOMAIN}:{ex.url.rsplit(':', 1)[1]}"


def _get(
    ex: Exchange, at: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    return httpx.request(
        kw.pop("method", "GET"),
        ex.url + path,
        headers={"Host": at, **(headers or {})},
        timeout=30,
        **kw,
    )


def test_a_ports_host_reaches_the_pod_with_the_path_unchanged(ex: Exchange, web: Any) -> None:
    token, pod, port, _tcp = web
    at = host(ex, pod.id, port)
    r = _get(ex, at, "/a/b%20c?x=1", {"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/a/b%20c?x=1"
    assert seen["headers"]["host"] == at
    assert seen["headers"]["x-forwarded-host"] == at
    assert "x-forwarded-prefix" not in seen["headers"]  # served at the root
    assert "authorization" not in seen["headers"]
    # A WebSocket upgrade goes there too: the echo app refuses it with its own 200.
    upgrade = {
        "Authorization": f"Bearer {token}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    r = _get(ex, at, "/ws/x", upgrade)
    assert r.status_code == 200 and r.json()["path"] == "/ws/x", r.text


def test_no_route_of_the_exchange_answers_on_a_ports_host(ex: Exchange, web: Any) -> None:
    token, pod, port, _tcp = web
    at = host(ex, pod.id, port)
    auth = {"Authorization": f"Bearer {token}"}
    planted = {**auth, "Cookie": "crucible_session=stolen; theirs=1"}
    for method, path in [
        ("GET", "/v1/accounts/me"),
        ("GET", "/console"),
        ("GET", "/login"),
        ("GET", "/"),
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/functions/fn-x/calls"),
        ("GET", "/web/a/b/c/d"),
        ("GET", f"/pods/{pod.id}/ports/{port}/"),
    ]:
        r = _get(ex, at, path, planted, method=method)
        assert r.status_code == 200, (path, r.text)
        seen = r.json()  # the pod's echo, not the exchange
        assert seen["path"] == path and seen["method"] == method
        assert seen["headers"]["cookie"] == "theirs=1"
    # A host under the domain that names no running pod's port: 404, never the API.
    for bad in (DOMAIN, f"nope.{DOMAIN}", f"pd-nope-{port}.{DOMAIN}", f"{pod.id}-0.{DOMAIN}"):
        r = _get(ex, bad, "/v1/accounts/me", auth)
        assert r.status_code == 404 and "error" in r.json(), (bad, r.text)
    # The exchange's own host still serves the API.
    r = httpx.get(ex.url + "/v1/accounts/me", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["id"].startswith("ac-"), r.text


def test_refusals_on_a_ports_host(ex: Exchange, web: Any) -> None:
    token, pod, port, tcp_port = web
    stranger = ex.new_account("stranger")
    at = host(ex, pod.id, port)
    assert _get(ex, at, "/").status_code == 401
    r = _get(ex, at, "/", {"Authorization": f"Bearer {stranger}"})
    assert r.status_code == 404, r.text
    assert _get(ex, at, "/?crucible_key=" + "0" * 32).status_code == 404
    auth = {"Authorization": f"Bearer {token}"}
    r = _get(ex, host(ex, pod.id, tcp_port), "/", auth)
    assert r.status_code == 404 and "port-forward" in r.text, r.text
    r = _get(ex, host(ex, pod.id, free_port()), "/", auth)
    assert r.status_code == 404 and f"published HTTP ports: {port}" in r.text, r.text
    r = _get(ex, host(ex, "pd-unknown", port), "/", auth)
    assert r.status_code == 404, r.text


def test_the_link_points_at_the_ports_host_and_its_cookie_is_host_only(
    ex: Exchange, web: Any
) -> None:
    _token, pod, port, tcp_port = web
    at = host(ex, pod.id, port)
    link = pod.port_link(port)
    assert link.startswith(f"http://{at}/pods/{pod.id}/ports/{port}/?crucible_key="), link
    key = link.split("crucible_key=")[1]
    r = _get(ex, at, f"/pods/{pod.id}/ports/{port}/?crucible_key={key}")
    assert r.status_code == 200, r.text
    assert "crucible_key" not in r.json()["path"]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"crucible_port_key={key};"), cookie
    assert "Path=/;" in cookie or cookie.endswith("Path=/")
    assert "domain" not in cookie.lower()  # host-only: no other host receives it
    # The cookie alone opens any path of this host, and nothing of another.
    r = _get(ex, at, "/tree/x", {"Cookie": f"crucible_port_key={key}"})
    assert r.status_code == 200 and r.json()["path"] == "/tree/x"
    other = host(ex, pod.id, tcp_port)
    assert _get(ex, other, "/", {"Cookie": f"crucible_port_key={key}"}).status_code == 404


def test_the_path_url_redirects_to_the_ports_host(ex: Exchange, web: Any) -> None:
    token, pod, port, _tcp = web
    auth = {"Authorization": f"Bearer {token}"}
    at = host(ex, pod.id, port)
    path = f"/pods/{pod.id}/ports/{port}/lab/x?y=1"
    r = httpx.get(ex.url + path, headers=auth, timeout=30)
    assert r.status_code == 307 and r.headers["location"] == f"http://{at}{path}", r.headers
    r = httpx.get(ex.url + f"/pods/{pod.id}/ports/{port}", headers=auth, timeout=30)
    assert r.status_code == 307
    assert r.headers["location"] == f"http://{at}/pods/{pod.id}/ports/{port}/"
    # Checked first, as before: no credentials 401, another account's pod 404.
    assert httpx.get(ex.url + path, timeout=30).status_code == 401
    stranger = {"Authorization": f"Bearer {ex.new_account('stranger-2')}"}
    assert httpx.get(ex.url + path, headers=stranger, timeout=30).status_code == 404


def test_the_console_session_cookie_is_host_only(ex: Exchange, web: Any) -> None:
    token, _pod, _port, _tcp = web
    with httpx.Client(base_url=ex.url, timeout=30) as browser:
        form = browser.get("/login")
        csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
        r = browser.post("/login", data={"csrf": csrf, "token": token, "next": "/"})
        assert r.status_code in (302, 303), r.text
        session = [c for c in r.headers.get_list("set-cookie") if c.startswith("crucible_session=")]
        assert session and "domain" not in session[0].lower(), session


def test_a_websocket_on_the_path_url_is_sent_to_the_ports_host(ex: Exchange, web: Any) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    token, pod, port, _tcp = web
    url = ex.url.replace("http", "ws") + f"/pods/{pod.id}/ports/{port}/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30)
    response = refused.value.response
    assert response.status_code == 400
    assert f"ws://{host(ex, pod.id, port)}/pods/{pod.id}/ports/{port}/ws" in response.body.decode()


def test_a_containers_port_has_its_own_host_too(ex: Exchange, web: Any) -> None:
    """Else a pod owner could share its container's port link, still on the exchange's
    origin, and the same page would read the console."""
    token, pod, port, _tcp = web
    auth = {"Authorization": f"Bearer {token}"}
    cid = pod.info().container_id
    at = host(ex, cid, port)
    r = _get(ex, at, "/x/y?z=1", auth)
    assert r.status_code == 200 and r.json()["path"] == "/x/y?z=1", r.text
    link = ex.client(token).get(f"/v1/containers/{cid}/ports/{port}/link")
    assert link["url"] == f"http://{at}/?crucible_key={link['key']}", link
    r = _get(ex, at, f"/?crucible_key={link['key']}")
    assert r.status_code == 200 and "domain" not in r.headers["set-cookie"].lower()
    assert "Path=/;" in r.headers["set-cookie"] or r.headers["set-cookie"].endswith("Path=/")
    # The path URL checks, then redirects to the host with the rest of the path.
    r = httpx.get(f"{ex.url}/ports/{cid}/{port}/a%20b?c=1", headers=auth, timeout=30)
    assert r.status_code == 307 and r.headers["location"] == f"http://{at}/a%20b?c=1"
    assert httpx.get(f"{ex.url}/ports/{cid}/{port}/", timeout=30).status_code == 401
    # Another account: 404 on its host and at its path URL; no key, no entry.
    stranger = {"Authorization": f"Bearer {ex.new_account('stranger-ct')}"}
    assert _get(ex, at, "/", stranger).status_code == 404
    assert (
        httpx.get(f"{ex.url}/ports/{cid}/{port}/", headers=stranger, timeout=30).status_code == 404
    )
    assert _get(ex, at, "/?crucible_key=" + "0" * 32).status_code == 404
    assert _get(ex, host(ex, "ct-unknown", port), "/", auth).status_code == 404
