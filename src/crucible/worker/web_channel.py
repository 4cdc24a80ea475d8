"""The worker's side of the web channel (protocol/web_channel.py): a WebSocket it dials to
the control plane (hosts only dial out; in a sandbox, through the agent's relay socket), on
which the gateway's requests arrive and their responses go back.

Everything runs on the container's one event loop for its web app (worker/web.py): a
request frame starts a task that runs the ASGI app, and what the app sends is written to the
socket from that task, with no thread between them and no batching timer. The response's
start waits for its first body part so that a plain response is one frame; a response of
several parts streams, each at most :data:`WINDOW` frames ahead of what the gateway's reader
acknowledged (back-pressure: the app's ``send`` waits). The channel reconnects when it drops;
what it was running is cancelled then (the gateway already answered those 504).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
import urllib.parse
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect, unix_connect

from crucible.errors import BadGatewayError, FunctionTimeoutError
from crucible.protocol.web_channel import (
    BUSY,
    FRAME_BODY_MAX,
    WINDOW,
    decode_frame,
    encode_frame,
)
from crucible.sdk._serialization import error_info_from_exception
from crucible.worker.logs import CALL_ID
from crucible.worker.web import (
    BODY_BEFORE_START,
    NO_RESPONSE,
    app_loop,
    body_once,
    http_scope,
    report,
)

__all__ = ["WebChannel", "channel_url"]

log = logging.getLogger("crucible.worker")

ASGIApp = Callable[..., Any]

_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 10.0


def channel_url(server_url: str, container_id: str, slots: int) -> str:
    """The channel's ``ws://`` (or ``wss://``) URL on the control plane at ``server_url``."""
    parsed = urllib.parse.urlsplit(server_url)
    scheme = "wss" if parsed.scheme == "https" else "ws"
    path = f"{parsed.path.rstrip('/')}/v1/containers/{container_id}/channel"
    return urllib.parse.urlunsplit((scheme, parsed.netloc, path, f"slots={slots}", ""))


class _Response:
    """One request's response going out on the channel."""

    def __init__(self, channel: WebChannel, ws: ClientConnection, request_id: str) -> None:
        self._channel = channel
        self._ws = ws
        self.id = request_id
        self.start: dict[str, Any] | None = None
        self.started = False
        self.done = False
        self.sent = 0
        self.acked = 0
        self.moved = asyncio.Event()

    async def _frame(self, header: dict[str, Any], data: bytes = b"") -> None:
        while self.sent - self.acked >= WINDOW:  # the gateway's reader is behind: wait
            self.moved.clear()
            await self.moved.wait()
        self.sent += 1
        await self._ws.send(encode_frame(header, data))

    async def send(self, message: dict[str, Any]) -> None:
        """The app's ``send``."""
        if self.done:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            return
        if kind != "http.response.body":
            return
        if self.start is None:  # no status to send it with: the gateway answers 502
            await self._invalid(BODY_BEFORE_START)
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        pieces = [body[i : i + FRAME_BODY_MAX] for i in range(0, len(body), FRAME_BODY_MAX)]
        for index, piece in enumerate(pieces or [b""]):
            await self._part(piece, more or index < len(pieces) - 1)

    async def _part(self, data: bytes, more: bool) -> None:
        if not self.started:
            start = self.start
            assert start is not None  # send and finish come here only once it was sent
            header = {
                "t": "start",
                "id": self.id,
                "status": int(start["status"]),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in start.get("headers", [])
                ],
                "more": more,
            }
            self.started = True
        else:
            header = {"t": "body", "id": self.id, "more": more}
        self.done = not more
        await self._frame(header, data)

    async def finish(self) -> None:
        """The app returned: end the response if it did not."""
        if self.done:
            return
        if self.start is None:
            await self._invalid(NO_RESPONSE)
            return
        await self._part(b"", False)

    async def _invalid(self, message: str) -> None:
        """The app broke ASGI's order (``message`` says how): its owner reads it in the
        app's logs, and the gateway answers 502 bad_gateway."""
        report(message)
        await self.fail(BadGatewayError.code, message)

    async def fail(self, code: str, message: str) -> None:
        if self.done:
            return
        self.done = True
        await self._ws.send(
            encode_frame({"t": "error", "id": self.id, "code": code, "message": message})
        )


class WebChannel:
    """The channel of one container; :meth:`start` dials it (and redials when it drops)."""

    def __init__(
        self,
        app: ASGIApp,
        url: str,
        token: str,
        *,
        unix_socket: str | None = None,
        name: str = "the endpoint",
        slots: int = 1,
        held: Callable[[], int] = lambda: 0,
    ) -> None:
        self.app = app
        self.slots = slots
        # How many calls the worker's exchange gave it that are not done: with the channel's
        # requests, never more than ``slots`` at once (a request beyond is sent back "busy"
        # and the gateway makes it a call, which waits for this container or another).
        self._held = held
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._unix_socket = unix_socket
        self._name = name
        self._responses: dict[str, _Response] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._ws: ClientConnection | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Dial the channel from the app's event loop, in the background."""
        asyncio.run_coroutine_threadsafe(self._run(), app_loop())

    def close(self, drain_s: float = 30.0) -> None:
        """Stop taking requests, let those in hand finish (up to ``drain_s``), then close.
        Blocks the calling thread (not the app's loop)."""
        future = asyncio.run_coroutine_threadsafe(self._close(drain_s), app_loop())
        with contextlib.suppress(Exception):
            future.result(drain_s + 5)

    async def _close(self, drain_s: float) -> None:
        self._closed = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.send(encode_frame({"t": "drain"}))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=drain_s)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    def _connect(self) -> Any:
        options: dict[str, Any] = {
            "additional_headers": self._headers,
            "user_agent_header": "crucible-worker",
            "compression": None,  # small frames on loopback: deflate costs more than it saves
            "max_size": None,  # the server's requests (their bodies are limited there)
            "open_timeout": 10,
        }
        if self._unix_socket:
            return unix_connect(self._unix_socket, self.url, **options)
        return connect(self.url, **options)

    async def _run(self) -> None:
        delay = _RETRY_FIRST_S
        while not self._closed:
            try:
                async with self._connect() as ws:
                    self._ws = ws
                    self.connected.set()
                    delay = _RETRY_FIRST_S
                    await self._serve(ws)
            except Exception as exc:  # refused, dropped: try again
                log.debug("web channel: %r", exc)
            finally:
                self._ws = None
                self.connected.clear()
                for task in list(self._tasks):  # the gateway answered these already
                    task.cancel()
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    async def _serve(self, ws: ClientConnection) -> None:
        async for message in ws:
            if isinstance(message, str):
                continue
            header, data = decode_frame(message)
            kind = header["t"]
            if kind == "req":
                task = asyncio.create_task(self._handle(ws, header, data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == "ack":
                response = self._responses.get(str(header.get("id")))
                if response is not None:
                    response.acked = max(response.acked, int(header.get("n", 0)))
                    response.moved.set()

    async def _handle(self, ws: ClientConnection, header: dict[str, Any], body: bytes) -> None:
        request_id = str(header["id"])
        if len(self._responses) + self._held() >= self.slots:
            frame = {"t": "error", "id": request_id, "code": BUSY, "message": "busy"}
            await ws.send(encode_frame(frame))
            return
        CALL_ID.set(request_id)  # this task's prints go to the logs under the request's id
        response = self._responses[request_id] = _Response(self, ws, request_id)
        receive = body_once(body)

        timeout_s = float(header.get("timeout_s", 300.0))
        try:
            try:
                scope = http_scope(header["http"])
                async with asyncio.timeout(timeout_s):
                    await self.app(scope, receive, response.send)
                await response.finish()
            except TimeoutError:
                message = f"the request ran past its timeout of {timeout_s:g} s"
                print(f"{FunctionTimeoutError.code}: {message}", flush=True)
                await response.fail(FunctionTimeoutError.code, message)
            except Exception as exc:
                traceback.print_exc()  # to the app's logs, under the request's id
                info = error_info_from_exception(exc, self._name)
                await response.fail(info.code, info.message)
        except Exception as exc:  # the channel went away while answering
            log.debug("web channel: request %s not answered: %r", request_id, exc)
        finally:
            self._responses.pop(request_id, None)
