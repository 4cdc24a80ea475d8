"""HEAD is answered wherever GET is (RFC 9110 9.3.2), as load balancers and uptime checks
send it to /healthz: the same status and headers as GET, no body, and the same token rules.
It was a 405 on every route."""

from __future__ import annotations

import http.client

from server_testlib import ServerUnderTest, serving


def _head(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("HEAD", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_head_answers_as_get_without_the_body(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    with serving(server) as port:
        status, headers, body = _head(port, "/healthz")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) == len(b'{"status":"ok"}')
        status, _, body = _head(port, "/v1/apps", alice)
        assert (status, body) == (200, b"")
        # The token rules are GET's.
        status, _, _ = _head(port, "/v1/apps")
        assert status == 401
        # A route without GET still refuses HEAD, naming what it takes.
        status, headers, _ = _head(port, "/v1/tokens/tk-1", alice)
        assert status == 405 and "HEAD" not in headers["allow"], headers
