"""The server's response writes: a head and its body in one socket write, a lone write at the
end of its loop step, nothing lost on close. What a client may hold before its head is
complete: a bounded size and time (a real uvicorn server on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from crucible.server.http_protocol import (
    MAX_HEAD_BYTES,
    CoalescingHttpToolsProtocol,
    _CoalescingTransport,
)


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_writes_of_one_step_go_out_together_and_close_flushes() -> None:
    async def scenario() -> _Recorder:
        raw = _Recorder()
        t = _CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert raw.writes == []  # a lone write waits for the step's end
        t.write(b"body")  # the second goes at once, with the first: one write
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # nothing more at the end
        t.write(b"chunk")
        assert raw.writes[-1] != b"chunk"
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"chunk"  # a lone write goes at the end of its step
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated
        t.write(b"last")
        t.close()  # a response that ends with a close is still sent whole
        assert raw.writes[-1] == b"last" and raw.closed
        return raw

    asyncio.run(scenario())


class _QuickHead(CoalescingHttpToolsProtocol):
    head_timeout_s = 0.5
    body_timeout_s = 0.5


# What the application saw of bodies that never completed (the body tests).
_DISCONNECTS: list[int] = []


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    """Says hello; on POST /echo, reads the whole body first and answers its length."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/echo":
        got = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                _DISCONNECTS.append(got)
                return
            got += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(got).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


@contextlib.contextmanager
def _serving() -> Iterator[int]:
    """A real uvicorn server with the protocol on a free loopback port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_hello, http=_QuickHead, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _read_all(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            out += chunk
    return out


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(conn)


def test_a_head_without_end_is_refused_not_buffered() -> None:
    """A header line that never ends (or a head of many headers) past MAX_HEAD_BYTES: 431 in
    the error envelope, the connection closed, the server still answering others."""
    with _serving() as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            with contextlib.suppress(OSError):  # the server may close while we still send
                for _ in range(2 * MAX_HEAD_BYTES // 4096 + 2):
                    conn.sendall(b"a" * 4096)
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b'"code": "payload_too_large"' in answer and b"KiB" in answer
        with socket.create_connection(("127.0.0.1", port)) as conn:
            many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
            with contextlib.suppress(OSError):
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            assert _read_all(conn).startswith(b"HTTP/1.1 431 ")
        # A head within the limit, and a large body after it, are served as before.
        assert _get(port).endswith(b"hello")
        with socket.create_connection(("127.0.0.1", port)) as conn:
            big = b"y" * (4 * MAX_HEAD_BYTES)
            head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(big) + big)
            assert _read_all(conn).startswith(b"HTTP/1.1 200 ")


def test_a_head_that_never_completes_does_not_hold_its_connection() -> None:
    """Slowloris: a head trickled or stalled gets 408 and the connection closes once the head
    timeout passes; a connection that sends nothing is closed quietly."""
    with _serving() as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"invalid_request" in answer
        with socket.create_connection(("127.0.0.1", port)) as conn:
            assert _read_all(conn) == b""  # closed by the server, not by the read's timeout
        # A keep-alive connection's second request is timed from its own first bytes.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(10)
            first = conn.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"hello")
            time.sleep(0.8)  # longer than the head timeout: idle between requests is allowed
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a third head, stalled
            assert _read_all(conn).startswith(b"HTTP/1.1 408 ")


def test_a_body_that_stops_arriving_does_not_hold_its_request() -> None:
    """A body announced and then stalled gets 408 after the body timeout, and the application
    reading it is told the client left; a slow body that keeps coming is served whole."""
    _DISCONNECTS.clear()
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    with _serving() as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(head + b"Content-Length: 100\r\n\r\n" + b"z" * 10)
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"body stopped arriving" in answer
        # A chunked body stalled between chunks: the same.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            assert _read_all(conn).startswith(b"HTTP/1.1 408 ")
        deadline = time.monotonic() + 5
        while len(_DISCONNECTS) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(_DISCONNECTS) == [5, 10]
        # Slow but steady: longer in all than the timeout, never silent that long.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(head + b"Content-Length: 60\r\n\r\n")
            for _ in range(6):
                time.sleep(0.2)
                conn.sendall(b"s" * 10)
            assert _read_all(conn).endswith(b"\r\n\r\n60")
        # Answered before its body came (the app did not read it), then stalled: closed.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")
        # Expect: 100-continue: waiting for the go-ahead is not a stall; once answered
        # without it, a body that never comes does not keep the connection.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"
            )
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Connection: close\r\nContent-Length: 4\r\n\r\n"
            )
            conn.settimeout(10)
            assert conn.recv(65536).startswith(b"HTTP/1.1 100 ")
            time.sleep(0.2)
            conn.sendall(b"abcd")
            assert _read_all(conn).endswith(b"\r\n\r\n4")
        assert _get(port).endswith(b"hello")  # and the server answers others throughout


def test_an_unknown_method_is_named() -> None:
    """A well-formed request with a method no server knows was answered "not valid
    HTTP/1.1"; it is a 501 that names the method (a malformed line stays a 400)."""
    with _serving() as port:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"FOO /v1/apps HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 501 "), answer
        assert b"FOO is not an HTTP method this server knows" in answer
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /a path with spaces HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"not valid HTTP/1.1" in answer
        assert _get(port).endswith(b"hello")


def test_a_request_that_does_not_parse_gets_the_error_envelope() -> None:
    """Malformed requests (smuggling attempts among them) get 400 with the error envelope and
    the connection closed; the server keeps answering others."""
    bad = [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    with _serving() as port:
        for request in bad:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(request)
                answer = _read_all(conn)
            assert answer.startswith(b"HTTP/1.1 400 "), (request, answer)
            assert b"application/json" in answer and b'"code": "invalid_request"' in answer
            assert b"not valid HTTP/1.1" in answer
        # On a kept-alive connection, after a request answered in full: the same.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(10)
            assert conn.recv(65536).endswith(b"hello")
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            answer = _read_all(conn)
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"code": "invalid_request"' in answer
        assert _get(port).endswith(b"hello")
