"""A pod's published HTTP ports at their per-pod URL, ``/pods/{pod}/ports/{port}/``, end to
end (real server, agent and worker processes on the ``process`` runtime): the full path,
the browser's Host and the client's cookies reach the pod (never the token, the link's key
or the exchange's cookies), the pod learns its prefix from ``$CRUCIBLE_PORT_{N}_PATH``, the
secret link and its cookie, refusals (401, 404, a port the pod did not publish), WebSockets,
and the same URL and link after ``stop``/``start``. tests/e2e/test_jupyter_pod_e2e.py runs
JupyterLab behind it in a browser."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import crucible
from access_testlib import ssh_env
from crucible.testing import free_port, wait_for

from harness import Exchange

# A web app that answers every request with what it saw (and sets a cookie of its own).
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
            "body": self.rfile.read(n).decode() if n else "",
            "env": {k: v for k, v in os.environ.items() if k.startswith("CRUCIBLE_PORT_")},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "app_session=abc; Path=/; HttpOnly")
        self.send_header("Set-Cookie", "crucible_session=planted; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("pod-ports")
    exchange = Exchange(root, f"sqlite:///{root / 'store.db'}")
    exchange.start_server()
    try:
        exchange.start_agent("host-a")
        yield exchange
    finally:
        exchange.close()


@pytest.fixture(scope="module")
def web(ex: Exchange) -> Iterator[tuple[str, Any, int, int]]:
    """The owner's token, and a running pod serving ECHO_APP on an HTTP port it published
    (and publishing another port as tcp)."""
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
        _wait_serving(pod.port_url(port), {"Authorization": f"Bearer {token}"})
        yield token, pod, port, tcp_port
    finally:
        pod.delete()
        client.close()


def _wait_serving(url: str, headers: dict[str, str]) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, headers=headers, timeout=30).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=120, what="the pod's web app")


def _seen(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_pod_url_forwards_the_full_path_host_and_cookies_but_ours(
    ex: Exchange, web: Any
) -> None:
    token, pod, port, _tcp = web
    prefix = f"/pods/{pod.id}/ports/{port}/"
    assert pod.port_url(port) == ex.url + prefix
    cookies = "theirs=1; crucible_port_key=leak1; crucible_session=leak2; other=2"
    r = httpx.post(
        f"{ex.url}{prefix}api/x%20y?a=1&b=2",
        headers={"Authorization": f"Bearer {token}", "Cookie": cookies},
        content=b"hello",
        timeout=30,
    )
    seen = _seen(r)
    assert seen["method"] == "POST" and seen["body"] == "hello"
    assert seen["path"] == f"{prefix}api/x%20y?a=1&b=2"  # not stripped, still encoded
    headers = seen["headers"]
    assert headers["cookie"] == "theirs=1; other=2"  # the app's cookies; never ours
    assert "authorization" not in headers
    assert token not in json.dumps(seen)
    assert headers["host"] == ex.url.split("//")[1]  # the browser's, for origin checks
    assert headers["x-forwarded-prefix"] == prefix.rstrip("/")
    assert headers["x-forwarded-proto"] == "http"
    # The pod learns its prefix from the environment.
    assert seen["env"] == {f"CRUCIBLE_PORT_{port}_PATH": prefix}
    # The app's cookie comes back; one in the exchange's name does not.
    assert r.headers.get_list("set-cookie") == ["app_session=abc; Path=/; HttpOnly"]


def test_the_secret_link_opens_the_port_and_its_cookie_the_rest(ex: Exchange, web: Any) -> None:
    token, pod, port, _tcp = web
    link = pod.port_link(port)
    prefix = f"/pods/{pod.id}/ports/{port}/"
    assert link.startswith(ex.url + prefix + "?crucible_key=")
    key = link.split("crucible_key=")[1]
    with httpx.Client(timeout=30) as browser:  # no token: like a browser given the link
        first = browser.get(link)
        seen = _seen(first)
        assert seen["path"] == prefix  # the key is not passed on
        assert key not in json.dumps(seen)
        set_cookie = first.headers["set-cookie"]
        assert f"crucible_port_key={key}" in set_cookie
        assert f"Path={prefix}" in set_cookie and "HttpOnly" in set_cookie
        # The page's next requests carry only the cookie, which is not passed on either.
        again = _seen(browser.get(f"{ex.url}{prefix}static/app.js"))
        assert again["path"] == f"{prefix}static/app.js"
        assert key not in json.dumps(again)
        assert "app_session=abc" in again["headers"]["cookie"]
    # By name too.
    assert ex.client(token).get(f"/v1/pods/web/ports/{port}/link")["url"] == link


def test_refusals(ex: Exchange, web: Any) -> None:
    token, pod, port, tcp_port = web
    stranger = ex.new_account("stranger")
    prefix = f"{ex.url}/pods/{pod.id}/ports/{port}/"
    cases = {
        "no credentials": ({}, prefix, 401),
        "another account": ({"Authorization": f"Bearer {stranger}"}, prefix, 404),
        "a wrong key": ({}, prefix + "?crucible_key=" + "0" * 32, 404),
        "a key that is not ASCII": ({}, prefix + "?crucible_key=%C3%A9t%C3%A9", 404),
        "an unknown pod": (
            {"Authorization": f"Bearer {token}"},
            f"{ex.url}/pods/pd-nope/ports/{port}/",
            404,
        ),
    }
    for what, (headers, url, status) in cases.items():
        r = httpx.get(url, headers=headers, timeout=30)
        assert r.status_code == status, (what, r.text)
        assert "error" in r.json(), what
    # Another port's key does not open this one.
    other_key = ex.client(token).get(f"/v1/pods/{pod.id}/ports/{port}/link")["key"]
    r = httpx.get(f"{ex.url}/pods/{pod.id}/ports/{tcp_port}/?crucible_key={other_key}")
    assert r.status_code == 404
    # A port the pod did not publish (or published as tcp): the error names the published.
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{ex.url}/pods/{pod.id}/ports/{free_port()}/", headers=auth, timeout=30)
    assert r.status_code == 404 and f"published HTTP ports: {port}" in r.text, r.text
    r = httpx.get(f"{ex.url}/pods/{pod.id}/ports/{tcp_port}/", headers=auth, timeout=30)
    assert r.status_code == 404 and "port-forward" in r.text, r.text
    r = httpx.get(
        f"{ex.url}/v1/pods/{pod.id}/ports/{port}/link",
        headers={"Authorization": f"Bearer {stranger}"},
        timeout=30,
    )
    assert r.status_code == 404, r.text
    # Nonsense is a client's mistake, never a 500.
    for url in (
        f"{ex.url}/pods/{pod.id}/ports/0/",
        f"{ex.url}/pods/{pod.id}/ports/70000/x",
        f"{ex.url}/v1/pods/{pod.id}/ports/99999/link",
        f"{ex.url}/pods/{'x' * 5000}/ports/{port}/",
    ):
        r = httpx.get(url, headers=auth, timeout=30)
        assert 400 <= r.status_code < 500, (url[:80], r.status_code, r.text)
    # Without the last slash: redirected to it (after the credentials are checked).
    r = httpx.get(f"{ex.url}/pods/{pod.id}/ports/{port}?x=1", headers=auth, timeout=30)
    assert r.status_code == 307 and r.headers["location"] == f"/pods/{pod.id}/ports/{port}/?x=1"
    assert httpx.get(f"{ex.url}/pods/{pod.id}/ports/{port}", timeout=30).status_code == 401
    stranger_auth = {"Authorization": f"Bearer {stranger}"}
    r = httpx.get(f"{ex.url}/pods/{pod.id}/ports/{port}", headers=stranger_auth, timeout=30)
    assert r.status_code == 404


def test_websockets_on_the_pod_url_are_refused_the_same_way(ex: Exchange, web: Any) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    token, pod, port, _tcp = web
    stranger = ex.new_account("stranger-ws")
    base = ex.url.replace("http", "ws") + f"/pods/{pod.id}/ports/{port}/ws"
    refusals = {
        "no credentials": ({}, base, 401),
        "another account": ({"Authorization": f"Bearer {stranger}"}, base, 404),
        "a wrong key": ({}, base + "?crucible_key=" + "0" * 32, 404),
        "not published": (
            {"Authorization": f"Bearer {token}"},
            base.replace(f"/{port}/", f"/{free_port()}/"),
            404,
        ),
    }
    for what, (headers, url, status) in refusals.items():
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == status, what
    # The echo app does not speak WebSocket: its own answer comes back (not an upgrade).
    with pytest.raises(InvalidStatus) as refused:
        connect(base, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30)
    assert refused.value.response.status_code == 200


def test_the_per_container_url_passes_the_clients_cookies_too(ex: Exchange, web: Any) -> None:
    token, pod, port, _tcp = web
    cid = pod.info().container_id
    r = httpx.get(
        f"{ex.url}/ports/{cid}/{port}/x",
        headers={"Authorization": f"Bearer {token}", "Cookie": "_xsrf=2|ab; crucible_port_key=k"},
        timeout=30,
    )
    seen = _seen(r)
    assert seen["path"] == "/x"  # this URL strips its prefix, as documented
    assert seen["headers"]["cookie"] == "_xsrf=2|ab"


@pytest.mark.timeout(300)
def test_the_url_and_the_link_survive_stop_and_start(ex: Exchange, web: Any) -> None:
    _token, pod, port, _tcp = web
    link = pod.port_link(port)
    before = pod.info().container_id
    pod.stop()
    assert pod.wait("stopped", "failed", timeout_s=90).state == "stopped"
    r = httpx.get(link, timeout=30)
    assert r.status_code == 409 and "crucible pod start" in r.text, r.text
    pod.start()
    assert pod.wait("running", "failed", timeout_s=120).state == "running", pod.info()
    assert pod.info().container_id != before
    assert pod.port_link(port) == link
    _wait_serving(link, {})
    assert _seen(httpx.get(link, timeout=30))["path"] == f"/pods/{pod.id}/ports/{port}/"


def test_the_cli_prints_the_url_and_the_link(ex: Exchange, web: Any, tmp_path: Path) -> None:
    token, pod, port, tcp_port = web
    env = {**ssh_env(ex, token, tmp_path / "cli-home"), "COLUMNS": "250"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "crucible.cli.main", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)

    show = cli("pod", "show", "web")
    assert show.returncode == 0, show.stderr
    assert f"  {port}  {pod.port_url(port)}" in show.stdout, show.stdout
    assert f"  {tcp_port}  " not in show.stdout  # a tcp port has no URL
    assert "crucible_key" not in show.stdout  # the secret is printed only when asked
    link = cli("pod", "link", "web")
    assert link.returncode == 0, link.stderr
    assert link.stdout.strip() == f"{port}: {pod.port_link(port)}"
    wrong = cli("pod", "link", "web", str(tcp_port))
    assert wrong.returncode != 0 and "port-forward" in wrong.stderr + wrong.stdout
