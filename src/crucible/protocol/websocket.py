"""A WebSocket for threaded code (the agent's access sessions, the CLI's tunnels), over the
asyncio implementation of ``websockets`` run in a thread of its own.

Why not ``websockets.sync``: it writes to the socket while holding the lock its reader thread
needs, so when both ends of a relayed session send at full speed (an echo, rsync) and their
buffers fill, neither end reads any more and the session deadlocks. Here the event loop keeps
reading while a send waits for the peer (up to ``max_queue`` messages, then reading pauses:
backpressure without a deadlock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

__all__ = ["ThreadedWebSocket"]

T = TypeVar("T")


class ThreadedWebSocket:
    """A client connection: :meth:`send` and :meth:`recv` block the calling thread only.
    One thread may receive while others send. Raises what ``websockets`` raises (the
    connection refused: ``InvalidStatus``, ``OSError``; ended: ``ConnectionClosed``)."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        max_size: int,
        open_timeout_s: float = 30.0,
        user_agent: str | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="crucible-websocket", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._ws: ClientConnection = self._call(
                _open(url, headers, max_size, open_timeout_s, user_agent)
            )
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed: another thread closed this WebSocket
            coro.close()  # never run, and not left to warn that it was never awaited
            raise ConnectionClosedError(None, None) from None
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the WebSocket did not answer in time") from None
        except concurrent.futures.CancelledError:  # closed under a send or recv in progress
            raise ConnectionClosedError(None, None) from None

    def send(self, message: bytes | str) -> None:
        self._call(self._ws.send(message))

    def recv(self) -> bytes | str:
        return self._call(self._ws.recv())

    def __iter__(self) -> Iterator[bytes | str]:
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                return

    def close(self) -> None:
        """Close (at most a few seconds for the closing handshake); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._call(self._ws.close(), timeout_s=5.0)
        self._stop_loop()

    def _stop_loop(self) -> None:
        """Stop the loop once what runs on it (another thread's recv or send, the
        connection's own tasks) is cancelled and finished, so nothing is left pending on a
        closed loop (a warning when collected)."""
        with contextlib.suppress(RuntimeError):  # already closed
            asyncio.run_coroutine_threadsafe(_cancel_all_then_stop(), self._loop)
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self._loop.close()


async def _cancel_all_then_stop() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    asyncio.get_running_loop().stop()


async def _open(
    url: str, headers: dict[str, str], max_size: int, open_timeout_s: float, user_agent: str | None
) -> ClientConnection:
    kwargs: dict[str, Any] = {}
    if user_agent is not None:
        kwargs["user_agent_header"] = user_agent
    return await connect(
        url,
        additional_headers=headers,
        max_size=max_size,
        open_timeout=open_timeout_s,
        compression=None,
        **kwargs,
    )
