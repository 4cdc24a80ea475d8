"""What the client sends again after a connection failure: a request that makes something anew
(a grant, a reservation, a pod, a queue item) is sent again with the same Idempotency-Key (the
server answers the first answer: tests/server/test_request_keys.py); one the server keeps no
key for (a token, a queue's get, a job's run) is never sent twice once the server may have
received it (a server killed between its commit and its answer made a second one); other
requests are retried; a request that could not be sent at all is retried whatever it is. Also
the client's own mistakes in a URL or a token fail at once, naming them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from crucible.errors import Error, InvalidRequestError, ServerUnavailableError
from crucible.protocol.transport import Transport


@contextmanager
def hangs_up() -> Iterator[tuple[str, list[str]]]:
    """A server that reads each request whole, then closes the connection without a word (as
    one killed after its commit, before its answer). Yields its URL and the request lines."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                data = b""
                conn.settimeout(2)
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                lines = head.split(b"\r\n")
                keys = [
                    v
                    for n, _, v in (ln.partition(b": ") for ln in lines[1:])
                    if n.lower() == b"idempotency-key"
                ]
                seen.append(lines[0].decode() + (f" key={keys[0].decode()}" if keys else ""))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        stop.set()
        listener.close()
        thread.join()


@pytest.mark.parametrize(
    "path",
    ["/v1/credits/grants", "/v1/reservations", "/v1/pods", "/v1/queues/q/put", "/v1/deployments"],
)
def test_a_request_that_makes_something_is_sent_again_with_its_key(path: str) -> None:
    with hangs_up() as (url, seen):
        t = Transport(url, "tok", retry_for_s=0.5)
        try:
            with pytest.raises(ServerUnavailableError, match="cannot reach the Crucible server"):
                t.post(path, {"x": 1})
            with pytest.raises(ServerUnavailableError) as failed:
                t.post(path, {"x": 1}, idempotency_key="given-1")
            # It reached a server: it may be done, and the key makes sending it again safe.
            said = str(failed.value)
            assert "may have been carried out" in said and "Idempotency-Key given-1" in said
        finally:
            t.close()
    first = [s for s in seen if "given-1" not in s]
    assert len(first) >= 2 and len(set(first)) == 1, seen  # one key, every time
    assert first[0].startswith(f"POST {path} HTTP/1.1 key=")
    assert seen[-1] == f"POST {path} HTTP/1.1 key=given-1"


@pytest.mark.parametrize(
    "path", ["/v1/tokens", "/v1/queues/q/get", "/v1/dicts/d/pop", "/v1/jobs/web/f/run"]
)
def test_a_request_that_makes_something_without_a_key_is_not_sent_twice(path: str) -> None:
    with hangs_up() as (url, seen):
        t = Transport(url, "tok", retry_for_s=1.0)
        try:
            with pytest.raises(ServerUnavailableError, match="it may have carried it out"):
                t.post(path, {"x": 1})
        finally:
            t.close()
    assert seen == [f"POST {path} HTTP/1.1"]


def test_other_requests_are_sent_again() -> None:
    with hangs_up() as (url, seen):
        t = Transport(url, "tok", retry_for_s=0.5)
        try:
            with pytest.raises(ServerUnavailableError, match="cannot reach the Crucible server"):
                t.post("/v1/apps/ap-1/heartbeat", {})
        finally:
            t.close()
    assert len(seen) >= 2 and set(seen) == {"POST /v1/apps/ap-1/heartbeat HTTP/1.1"}


def test_mistakes_in_a_url_or_a_token_fail_at_once() -> None:
    with pytest.raises(Error, match="a port from 1 to 65535"):
        Transport("http://127.0.0.1:99999", "tok")
    with pytest.raises(Error, match=r"ends in an API path: .*\(http://127.0.0.1:8745\)"):
        Transport("http://127.0.0.1:8745/v1", "tok")  # it asked for /v1/v1/...
    for token in ("cru_abc\r", "a\nb", "cru_\u20ac", "cru_\x1b[31m"):
        with pytest.raises(Error, match="the token holds a space, a line end"):
            Transport("http://127.0.0.1:8745", token)
    t = Transport("http://127.0.0.1:1", "tok", retry_for_s=30)
    try:
        for path in ("/v1/secrets/a b", "/v1/calls/ ca-1", "/v1/secrets/s5#typo"):
            with pytest.raises(InvalidRequestError, match="none has"):
                t.request("DELETE", path)
    finally:
        t.close()


def test_a_server_name_that_does_not_resolve_fails_at_once() -> None:
    """It was retried like a refused connection for the whole window (30 s)."""
    t = Transport("http://crucible.invalid:8745", "tok", retry_for_s=30)
    try:
        with pytest.raises(ServerUnavailableError, match="its host name does not resolve"):
            t.get("/v1/apps")
    finally:
        t.close()
