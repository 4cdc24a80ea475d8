"""uvicorn's httptools protocol, with each response written to the socket in one piece.

uvicorn writes a response's head and body with two socket writes. On loopback every write is
a system call that runs the TCP stack for the receiver too, so the second write costs about
as much as the request's own work (measured: 40% of the server's CPU on the `.remote()`
round trip). A response's first write (its head) waits for the end of the loop step; the
next write (its body, most often in the same step) sends both at once, without waiting for
the step to end; a write with nothing before it waits again. Nothing waits longer than the
step it was written in.

It also bounds what a client may hold before its request's head is complete, which uvicorn
does not: a head (request line and headers) of more than :data:`MAX_HEAD_BYTES` is answered
``431`` and the connection closed (llhttp would keep buffering one header line without
end: 200 MiB of one header grew the server by as much), and a connection whose head is not
complete :data:`HEAD_TIMEOUT_S` after it opened or after a read left it incomplete is
closed (``408`` when some of it came): a client trickling a head, or opening connections and
sending nothing, cannot keep sockets forever. Between requests uvicorn's keep-alive timeout
applies, as before. A request's body is bounded in time the same way, as nginx's
``client_body_timeout`` does: a body that stops arriving for :data:`BODY_TIMEOUT_S` before it
is complete is answered ``408`` (or its connection closed, when the answer has begun) and the
application is told the client left. The time a client is not sent data because the server
stopped reading (its buffer is full, or it has not asked for a ``100 Continue`` body yet)
does not count. A request that does not parse gets ``400`` in the error envelope, not
uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from crucible.errors import InvalidRequestError, PayloadTooLargeError

__all__ = ["BODY_TIMEOUT_S", "HEAD_TIMEOUT_S", "MAX_HEAD_BYTES", "CoalescingHttpToolsProtocol"]

# As nginx's and Node's defaults are of that order (8-32 KiB, 16 KiB): a request's head
# holds a token, cookies and a few headers; anything this long is a mistake or an attack.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 60.0  # the longest silence within a body (nginx's client_body_timeout)
_LINGER_S = 2.0  # after a refusal, how long the client's further bytes are read and dropped


class _CoalescingTransport:
    """Buffers a lone ``write`` until the end of the current loop step (a second one sends
    both at once); delegates the rest."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if self._pending:  # a response's body after its head: both go now, in one write
            self._pending.append(data)
            self._flush()
            return
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_step)

    def _end_of_step(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def finish(self, linger_s: float) -> None:
        """Send what is pending and end the writing side, then close after ``linger_s`` (or
        when the client closes first): closing with the client's bytes still unread would
        reset the connection, and the client could lose the answer before reading it."""
        self._flush()
        if self._transport.can_write_eof():
            self._transport.write_eof()
            self._loop.call_later(linger_s, self._transport.close)
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _refusal(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


_TOO_LARGE = _refusal(
    b"431 Request Header Fields Too Large",
    PayloadTooLargeError.code,
    f"the request's line and headers exceed {MAX_HEAD_BYTES // 1024} KiB; send less in "
    "headers (large data goes in the body)",
)
_TIMED_OUT = _refusal(
    b"408 Request Timeout",
    InvalidRequestError.code,
    f"the request's line and headers did not arrive within {HEAD_TIMEOUT_S:g} s",
)
_MALFORMED = _refusal(
    b"400 Bad Request",
    InvalidRequestError.code,
    "the request is not valid HTTP/1.1: its request line, headers or chunked body could not "
    "be parsed; send a well-formed request (CRLF line ends, a percent-encoded path, one "
    "Content-Length or Transfer-Encoding: chunked, not both)",
)
_BODY_TIMED_OUT = _refusal(
    b"408 Request Timeout",
    InvalidRequestError.code,
    f"the request's body stopped arriving: nothing came for {BODY_TIMEOUT_S:g} s before it "
    "was complete (send the whole body it announced)",
)


def _unknown_method(method: bytes) -> bytes:
    """501 for a request whose method is a well-formed token no server knows (``FOO``)."""
    return _refusal(
        b"501 Not Implemented",
        InvalidRequestError.code,
        f"{method.decode()} is not an HTTP method this server knows; the API takes GET, "
        "HEAD, POST, PUT, PATCH, DELETE and OPTIONS",
    )


# A well-formed request line, its method an upper-case token (RFC 9110 allows any token;
# llhttp parses a list of them).
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) [!-~]+ HTTP/1\.[01]\r?\n")
# What llhttp parses (HTTP, WebDAV, RTSP...): a request with one of these that fails to
# parse failed for another reason (its path, its headers), and is answered as malformed.
_PARSED_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE NOTIFY SUBSCRIBE "
    b"UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY PRI DESCRIBE ANNOUNCE SETUP "
    b"PLAY PAUSE TEARDOWN RECORD REDIRECT FLUSH".split()
)


class _HeadTooLarge(Exception):
    """Raised from the parser's callback to stop it; the refusal is already written."""


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        # Waiting for a request's head: bytes of it seen so far, and its deadline.
        self._head_open = True
        self._head_bytes = 0  # bytes received while the head was open
        self._method = b""  # the method of a well-formed request line, else b""
        self._head_seen = 0  # the head's URL and headers as parsed
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout_s, self._head_timed_out
        )
        # A request whose head is complete and whose body is not: when its last bytes came.
        self._in_body = False
        self._body_seen_at = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._head_open:
            if not self._head_bytes:  # a request's first bytes: its method, for refusals
                line = _REQUEST_LINE.match(data)
                self._method = line.group(1) if line else b""
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_open and self._head_bytes:  # a head begun in this read, not complete
            if self._head_bytes > self.max_head_bytes:
                self._refuse(_TOO_LARGE)
            elif self._head_timer is None:
                # Timed from its first bytes. A head that comes whole in one read (most do)
                # never arms a timer: nothing is added to a request's path.
                self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        elif self._in_body:  # a body begun or continued in this read, not complete
            self._body_seen_at = self.loop.time()
            if self._body_timer is None:  # a body that comes whole with its head arms none
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_idle)

    def on_url(self, url: bytes) -> None:
        self._head_seen += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_seen += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._stop_head_timer()
        if self._head_seen > self.max_head_bytes:  # a whole head, in one read, too large
            self._refuse(_TOO_LARGE)
            raise _HeadTooLarge  # stops the parser: the request never reaches the app
        super().on_headers_complete()
        # Until its message completes (a WebSocket upgrade is not a body: another protocol).
        self._in_body = not (self.parser.should_upgrade() and self._should_upgrade())

    def on_message_complete(self) -> None:
        # The next request's head, when it comes.
        self._head_open, self._head_bytes, self._head_seen = True, 0, 0
        self._in_body = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_idle(self) -> None:
        self._body_timer = None
        if not self._in_body or self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        waiting = cycle is not None and not cycle.response_started
        if self.flow.read_paused or (waiting and cycle.waiting_for_100_continue):
            # Not the client's silence: we are not reading, or it waits for our go-ahead
            # (once answered, it has none to wait for: the body is owed or the socket goes).
            self._body_seen_at = now
        idle = now - self._body_seen_at
        if idle < self.body_timeout_s:
            self._body_timer = self.loop.call_later(self.body_timeout_s - idle, self._body_idle)
            return
        self._in_body = False
        if cycle is not None and cycle.response_complete:
            self.transport.close()  # answered without reading it: nothing more to say
        else:
            self._abandon(_BODY_TIMED_OUT)

    def _abandon(self, refusal: bytes) -> None:
        """End the request in progress: its application's receive() gets http.disconnect and
        what it still sends is dropped; the client gets ``refusal``, or only the closed
        connection once an answer has begun."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # none in progress (a keep-alive's last)
            self._refuse(refusal)
            return
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self._refused = True
            self.transport.close()
        else:
            self._refuse(refusal)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._head_open or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(_TIMED_OUT)
        else:  # nothing was asked: close quietly, as for an idle keep-alive connection
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._head_open = False
        self._refused = True  # what the client still sends is read and dropped
        self._stop_head_timer()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.finish(_LINGER_S)  # type: ignore[attr-defined]

    def send_400_response(self, msg: str) -> None:
        """A request llhttp could not parse: uvicorn answers it in plain text; here it gets
        the error envelope every other refusal has (and a lingering close)."""
        if not self._refused:  # after a refusal the parser's error is ours: answered already
            method = self._method
            if self.cycle is None and method and method not in _PARSED_METHODS:
                # a well-formed request line whose method llhttp does not know
                self._abandon(_unknown_method(method))
                return
            # Also a request already handed to the application (its chunked body went bad).
            self._abandon(_MALFORMED)
