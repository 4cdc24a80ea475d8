"""uvicorn's httptools protocol, with each response written to the socket in one piece.

uvicorn writes a response's head and body with two socket writes. On loopback every write is
a system call that runs the TCP stack for the receiver too, so the second write costs about
as much as the request's own work (measured: 40% of the server's CPU on the `.remote()`
round trip). A response's first write (its head) waits for the end of the loop step; the
next write (its body, most often in the same step) sends both at once, without waiting for
the step to end; a write with nothing before it waits again. Nothing waits longer than the
step it was written in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol"]


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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
