"""A transport given several server URLs (replicas) moves to the next on connection errors."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

import pytest

from crucible.errors import Error, InvalidRequestError, ServerUnavailableError
from crucible.protocol.access import websocket_url
from crucible.protocol.transport import Transport, server_urls
from crucible.testing import free_port


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"who": "live"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def live_url() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_a_dead_replica_is_skipped_at_once(live_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t = Transport(f"{dead}, {live_url}/", "tok", retry_for_s=0.5)
    try:
        assert t.urls == [dead, live_url]
        assert t.get("/v1/anything") == {"who": "live"}
        assert t.base_url == live_url  # later requests go straight to the live one
        assert t.get("/v1/anything") == {"who": "live"}
    finally:
        t.close()


def test_every_replica_dead_names_them_all() -> None:
    a, b = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    t = Transport(f"{a},{b}", None, retry_for_s=0.2)
    try:
        with pytest.raises(ServerUnavailableError, match=re.escape(f"{a}, {b}")):
            t.get("/healthz")
    finally:
        t.close()


def test_a_bad_url_in_the_list_is_named() -> None:
    with pytest.raises(Error, match=re.escape("'ftp://x' must look like http://127.0.0.1:8745")):
        server_urls("http://127.0.0.1:1,ftp://x")
    with pytest.raises(Error, match="no server URL given"):
        server_urls(" , ")


def test_tunnels_use_the_first_replica() -> None:
    assert websocket_url("http://a:1,http://b:2", "/x") == "ws://a:1/x"


class _Balancer(http.server.BaseHTTPRequestHandler):
    """A load balancer whose replicas are all down for the first ``down`` requests (haproxy's
    own 503 page), then one answers; or a replica that answers its own 503 error."""

    down = 2
    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(self.path)
        if self.path == "/own-503":
            status, body = 503, b'{"error": {"code": "server_unavailable", "message": "busy"}}'
        elif self.path == "/store-down" and len(self.seen) <= self.down:
            status, body = 503, b'{"error": {"code": "store_unavailable", "message": "db"}}'
        elif len(self.seen) <= self.down:
            status, body = 503, b"<html><body><h1>503 Service Unavailable</h1></body></html>"
        else:
            status, body = 200, b'{"who": "replica"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def balancer_url() -> Iterator[str]:
    _Balancer.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Balancer)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_a_balancer_with_no_replica_up_is_retried(balancer_url: str) -> None:
    """Found by the chaos test: haproxy answered 503 while both replicas restarted, and the
    SDK raised it (stopping the app run) instead of waiting as for a refused connection."""
    t = Transport(balancer_url, "tok", retry_for_s=5)
    try:
        assert t.post("/v1/x", {}) == {"who": "replica"}
        assert len(_Balancer.seen) == 3
    finally:
        t.close()


def test_a_balancer_down_past_the_retry_window_is_named(balancer_url: str) -> None:
    _Balancer.down = 10_000
    t = Transport(balancer_url, "tok", retry_for_s=0.2)
    try:
        with pytest.raises(ServerUnavailableError, match="load balancer answered HTTP 503"):
            t.post("/v1/x", {})
    finally:
        _Balancer.down = 2
        t.close()


def test_a_replicas_own_503_is_its_error_not_a_retry(balancer_url: str) -> None:
    t = Transport(balancer_url, "tok", retry_for_s=5)
    try:
        with pytest.raises(ServerUnavailableError, match="busy"):
            t.post("/own-503", {})
        assert _Balancer.seen == ["/own-503"]
    finally:
        t.close()


def test_a_replica_whose_database_is_down_for_a_moment_is_retried(balancer_url: str) -> None:
    """A PostgreSQL restart used to end a running `crucible run` with a 500."""
    t = Transport(balancer_url, "tok", retry_for_s=5)
    try:
        assert t.post("/store-down", {}) == {"who": "replica"}
        assert _Balancer.seen == ["/store-down"] * 3
    finally:
        t.close()


def test_an_integer_past_64_bits_is_named_before_anything_is_sent() -> None:
    # `crucible reserve H100 --nodes 99999999999999999999999` printed orjson's traceback.
    t = Transport(f"http://127.0.0.1:{free_port()}", "tok", retry_for_s=0)
    with pytest.raises(InvalidRequestError, match=r"/v1/reservations holds a value JSON cannot"):
        t.request("POST", "/v1/reservations", {"nodes": 10**23})


def test_an_empty_id_is_named_before_anything_is_sent() -> None:
    # `crucible secret delete ''` answered "server answered HTTP 307".
    t = Transport(f"http://127.0.0.1:{free_port()}", "tok", retry_for_s=0)
    for path in ("/v1/secrets/", "/v1/apps//stop", "/v1/calls/?x=1"):
        with pytest.raises(InvalidRequestError, match="a name or an id in it is empty"):
            t.request("DELETE", path)


def test_the_retry_window_opens_at_the_failure_not_at_the_request() -> None:
    """A long poll that waited 1.5 s before the server went away was given up at once with a
    1 s window (the window was counted from the request): the SDK gave up on a 21 s outage
    although it promises 30 s."""
    seen: list[int] = []

    class _DropsTheFirst(_Hello):
        def do_GET(self) -> None:
            seen.append(1)
            if len(seen) == 1:  # the long poll: waits, then the server goes away
                threading.Event().wait(1.5)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsTheFirst)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    t = Transport(f"http://127.0.0.1:{srv.server_address[1]}", "tok", retry_for_s=1.0)
    try:
        assert t.get("/v1/calls/ca-1?wait_s=25") == {"who": "live"}
        assert len(seen) == 2
    finally:
        t.close()
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_a_remote_server_that_does_not_answer_is_not_told_to_crucible_up() -> None:
    far = Transport("http://exchange.invalid:9", None, timeout_s=0.5, retry_for_s=0.1)
    near = Transport(f"http://127.0.0.1:{free_port()}", None, retry_for_s=0.1)
    try:
        with pytest.raises(ServerUnavailableError) as remote:
            far.get("/v1/anything")
        assert "crucible up" not in str(remote.value) and "URL" in str(remote.value)
        with pytest.raises(ServerUnavailableError, match="crucible up"):
            near.get("/v1/anything")
    finally:
        far.close()
        near.close()


def test_a_full_store_is_named_to_the_client() -> None:
    class _Full(_Hello):
        def do_GET(self) -> None:
            body = (
                b'{"error": {"code": "store_unavailable", "message": "the exchange\'s '
                b'database or its disk is full"}}'
            )
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Full)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    t = Transport(f"http://127.0.0.1:{srv.server_address[1]}", "tok", retry_for_s=0.2)
    try:
        with pytest.raises(ServerUnavailableError) as err:
            t.get("/v1/anything")
        assert "disk is full" in str(err.value) and "crucible up" not in str(err.value)
    finally:
        t.close()
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_a_wait_for_a_server_that_does_not_answer_is_told_once() -> None:
    """The CLI stayed silent for the whole retry window before its error (cli2 probe): the
    transport tells its on_wait once per request when it starts waiting."""
    told: list[str] = []
    t = Transport(f"http://127.0.0.1:{_closed_port()}", "tok", retry_for_s=1)
    t.on_wait = told.append
    try:
        with pytest.raises(ServerUnavailableError):
            t.get("/v1/apps")
    finally:
        t.close()
    assert len(told) == 1 and "trying again" in told[0], told


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when this returns: nothing listens there
