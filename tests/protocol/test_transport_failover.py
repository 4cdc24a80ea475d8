"""A transport given several server URLs (replicas) moves to the next on connection errors."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

import pytest

from crucible.errors import Error, ServerUnavailableError
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
