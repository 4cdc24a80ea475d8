"""Web requests relayed to a warm container in memory: the gateway's fast path.

A synchronous HTTP request need not be durable the way ``.spawn()`` is: if the server dies,
the client's connection dies with it. So when a warm container of the endpoint has a free
slot on its web channel (server/web_channel.py: one WebSocket per container, the response's
parts come back on it as frames), or is parked on its exchange (server/dispatch.py: the
parts come back through ``/items`` and ``/exchange``), the gateway hands it the request
directly and writes no call row; either way the parts are delivered here, in memory, instead
of to the store. With no parked container (scale from zero, every
container busy) the request takes the durable path: a call, as before.

What stays the same: the request id has the form of a call id (``rq-...``) and is what
``x-crucible-call-id`` and the worker's log lines carry; the scheduler counts relayed
requests as running calls of their function and their containers as busy
(scheduler/loop.py), so autoscaling and scale-down see the load; metering is by container
time as for every call. What a relayed request lacks is a row: ``crucible call`` does not
know it (a failed one's error goes to the app's logs under its id), and a container that
exits mid-request ends it with an error (when its agent reports the exit, or at the
function's timeout) instead of a retry.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from crucible.errors import BadGatewayError, ContainerExitedError
from crucible.protocol import json_payload
from crucible.protocol.common import Payload
from crucible.protocol.containers import InputAssignment
from crucible.protocol.ids import new_id
from crucible.protocol.web import decode_response
from crucible.server.dispatch import Dispatcher

__all__ = [
    "BODY_BEFORE_START",
    "NO_RESPONSE",
    "NO_VALID_RESPONSE",
    "Ended",
    "Relayed",
    "RelayedResponse",
    "WebRelay",
    "relayed_response",
    "rest_of",
]

# Items a worker may be ahead of the gateway's reader (the same window as generator calls).
WINDOW = 256
# How long past its function's timeout a relayed request waits for its worker's answer
# before it ends as lost (the worker died, or its container was stopped under it).
GRACE_S = 30.0
# What an app did instead of answering, for its 502 (the gateway says "the endpoint's app
# ..."; a web channel's worker reports only that it did one or the other).
NO_RESPONSE = "returned without sending a response (no `http.response.start`)"
BODY_BEFORE_START = "sent a response body before its start (`http.response.start`)"
NO_VALID_RESPONSE = "sent no valid response (none at all, or a body before its start)"


@dataclass(frozen=True)
class Ended:
    """How a relayed request ended: the worker's output, or ``undelivered`` (the worker's
    exchange went away before it took the request: nothing ran, the durable path may) or
    ``lost`` (no answer within the function's timeout and :data:`GRACE_S`)."""

    status: str
    result: bytes | None = None
    error_code: str | None = None


@dataclass(eq=False)
class Relayed:
    id: str
    function_id: str
    container_id: str
    account_id: str
    deadline: float  # monotonic s
    # The response's parts: encoded items (from /items) or decoded ones (from a channel).
    queue: asyncio.Queue[bytes | dict[str, Any] | Ended] = field(default_factory=asyncio.Queue)
    received: int = 0  # items the worker sent
    consumed: int = 0  # items the reader took
    read: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: bool = False  # nobody reads it any more: the worker's items are dropped
    ended: Ended | None = None
    # Set by a web channel (server/web_channel.py): told how many parts the reader took, and
    # that the request ended.
    on_read: Callable[[int], None] | None = None
    on_end: Callable[[], None] | None = None


class WebRelay:
    """The relayed requests of this server process, by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Relayed] = {}

    def hand(
        self,
        dispatcher: Dispatcher,
        function_id: str,
        account_id: str,
        raw: bytes,
        timeout_s: float,
    ) -> Relayed | None:
        """Give the request (``raw``, the input's JSON payload) to a parked container of the
        function; None when none is parked (then the caller submits a call)."""
        taken = dispatcher.take(function_id, 1)
        if not taken:
            return None
        parked = taken[0]
        relayed = Relayed(
            id=new_id("rq"),
            function_id=function_id,
            container_id=parked.container_id,
            account_id=account_id,
            deadline=time.monotonic() + timeout_s + GRACE_S,
        )
        self._sweep()
        self._by_id[relayed.id] = relayed
        parked.handed.append(
            InputAssignment(
                call_id=relayed.id, attempt=1, args=Payload.inline(raw), timeout_s=timeout_s
            )
        )
        parked.event.set()
        return relayed

    def track(self, relayed: Relayed) -> None:
        """Count a request handed some other way (a web channel) as relayed."""
        self._sweep()
        self._by_id[relayed.id] = relayed

    def part(self, relayed: Relayed, part: dict[str, Any]) -> None:
        """One decoded part of the response (from a web channel) for its reader."""
        relayed.received += 1
        if relayed.abandoned:
            relayed.consumed = relayed.received
            if relayed.on_read is not None:
                relayed.on_read(relayed.consumed)
            return
        relayed.queue.put_nowait(part)

    def get(self, request_id: str, container_id: str) -> Relayed | None:
        """The relayed request ``request_id`` if ``container_id`` runs it."""
        relayed = self._by_id.get(request_id)
        if relayed is None or relayed.container_id != container_id:
            return None
        return relayed

    def items(self, relayed: Relayed, start: int, items: list[bytes]) -> None:
        """The worker's items from index ``start`` (a resend of ones already here is
        skipped)."""
        fresh = items[max(0, relayed.received - start) :] if start <= relayed.received else []
        relayed.received += len(fresh)
        if relayed.abandoned:
            relayed.consumed = relayed.received
            return
        for item in fresh:
            relayed.queue.put_nowait(item)

    async def caught_up(self, relayed: Relayed, wait_s: float) -> int:
        """Wait (up to ``wait_s``) until the reader is within :data:`WINDOW` items of the
        worker; how many it has read, or -1 when it is still too far behind."""
        deadline = time.monotonic() + wait_s
        while relayed.received - relayed.consumed > WINDOW and not relayed.abandoned:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return -1
            relayed.read.clear()
            try:
                await asyncio.wait_for(relayed.read.wait(), remaining)
            except TimeoutError:
                return -1
        return relayed.received if relayed.abandoned else relayed.consumed

    def finish(self, relayed: Relayed, ended: Ended) -> None:
        """The request ended (its output, or never delivered): the reader gets ``ended``."""
        if self._by_id.get(relayed.id) is relayed:
            del self._by_id[relayed.id]
        if relayed.on_end is not None:
            relayed.on_end()
        relayed.queue.put_nowait(ended)
        relayed.read.set()

    def undelivered(self, container_id: str, request_ids: list[str]) -> list[str]:
        """End the relayed ones among ``request_ids`` (handed to a container whose exchange
        went away before taking them) as undelivered; the other ids (calls) are returned."""
        calls = []
        for rid in request_ids:
            relayed = self.get(rid, container_id)
            if relayed is None:
                calls.append(rid)
            else:
                self.finish(relayed, Ended("undelivered"))
        return calls

    def end_container(self, container_id: str) -> None:
        """The container exited (its agent said so): what it was running ends now, as
        lost, instead of at its deadline."""
        for relayed in [r for r in self._by_id.values() if r.container_id == container_id]:
            self.finish(relayed, Ended("lost", error_code=ContainerExitedError.code))

    def abandon(self, relayed: Relayed) -> None:
        """Nobody reads the response any more (the client left): drop what comes."""
        relayed.abandoned = True
        relayed.consumed = relayed.received
        relayed.read.set()
        if relayed.on_read is not None:
            relayed.on_read(relayed.consumed)

    def in_flight(self) -> dict[str, int]:
        """Relayed requests running now, per function (the scheduler counts them). Safe to
        call from another thread: it only reads a copy."""
        now = time.monotonic()
        counts: dict[str, int] = {}
        for relayed in list(self._by_id.values()):
            if relayed.deadline > now:
                counts[relayed.function_id] = counts.get(relayed.function_id, 0) + 1
        return counts

    def busy(self) -> set[str]:
        """Containers running a relayed request now (safe from another thread too)."""
        now = time.monotonic()
        return {r.container_id for r in list(self._by_id.values()) if r.deadline > now}

    def _sweep(self) -> None:
        now = time.monotonic()
        for relayed in [r for r in self._by_id.values() if r.deadline <= now]:
            self.finish(relayed, Ended("lost", error_code=ContainerExitedError.code))


@dataclass
class RelayedResponse:
    """A relayed request's answer. ``status`` None: it ended without one (``state`` and
    ``error_code`` say how). ``whole``: the body, when the response was complete before
    anything was sent (then ``body`` yields it too). Once ``body`` is read to its end,
    ``state`` is how the request ended."""

    call_id: str
    status: int | None
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    whole: bytes | None = None
    state: str = "running"
    error_code: str | None = None
    relayed: Relayed | None = None
    reason: str | None = None  # with ``error_code`` bad_gateway: what the app did


async def relayed_response(relayed: Relayed) -> RelayedResponse | None:
    """Wait for the response to start; None when the request was never delivered (nothing
    ran: the caller takes the durable path instead). A reader that stops reading ``body``
    early calls :meth:`WebRelay.abandon` (or reads on with :func:`rest_of`). An app that
    returned without a response, or sent a body first, is an answer without a status, failed
    with the code ``bad_gateway`` (the gateway's 502)."""
    parts = _parts(relayed)
    first = await anext(parts, None)
    if first is None:
        ended = relayed.ended or Ended("lost")
        if ended.status == "undelivered":
            return None
        if ended.status == "succeeded":  # the app returned, having sent nothing
            return _unanswered(relayed, NO_RESPONSE)
        return RelayedResponse(
            relayed.id, None, [], _nothing(), None, ended.status, ended.error_code, relayed
        )
    if "status" not in first:
        return _unanswered(relayed, BODY_BEFORE_START)
    start = first
    headers = [(str(k), str(v)) for k, v in start.get("headers", [])]
    answer = RelayedResponse(relayed.id, int(start["status"]), headers, _nothing())
    answer.relayed = relayed
    if "whole" in start:  # a channel's response in one frame
        answer.whole = start["whole"]
        async for _ in parts:  # its end
            pass
        answer.state = _state(relayed)
    elif relayed.ended is not None:  # the whole response rode in the output
        rest = [p async for p in parts]
        answer.whole = b"".join(_data(p) or b"" for p in rest)
        answer.state = _state(relayed)

    async def body() -> AsyncIterator[bytes]:
        if answer.whole is not None:
            yield answer.whole
            return
        if start.get("data"):
            yield start["data"]
        async for part in parts:
            data = _data(part)
            if data is not None:
                yield data
        answer.state = _state(relayed)
        answer.error_code = relayed.ended.error_code if relayed.ended else None

    answer.body = body()
    return answer


def _unanswered(relayed: Relayed, reason: str) -> RelayedResponse:
    """The answer for a request whose app sent no valid response (``reason``: what it did)."""
    code = BadGatewayError.code
    return RelayedResponse(relayed.id, None, [], _nothing(), None, "failed", code, relayed, reason)


def rest_of(relay: WebRelay, relayed: Relayed) -> AsyncIterator[bytes]:
    """What is left of a response whose reader stopped early (e.g. its client left): read
    on from where it stopped, no longer abandoned."""
    relayed.abandoned = False

    async def body() -> AsyncIterator[bytes]:
        try:
            async for part in _parts(relayed):
                data = _data(part)
                if data is not None:
                    yield data
        finally:
            relay.abandon(relayed)

    return body()


def _data(part: dict[str, Any]) -> bytes | None:
    """A body part's bytes (raw from a channel, base64 in an item); None for a start."""
    if "data" in part and "status" not in part:
        data: bytes = part["data"]
        return data
    if "body" in part:
        return base64.b64decode(part["body"])
    return None


def _state(relayed: Relayed) -> str:
    return relayed.ended.status if relayed.ended is not None else "running"


async def _parts(relayed: Relayed) -> AsyncIterator[dict[str, Any]]:
    """The response's parts as the worker sends them; ``relayed.ended`` is set at the end."""
    queue = relayed.queue
    while relayed.ended is None:
        if queue.empty():  # else no timer: a part that is here already is taken at once
            try:
                async with asyncio.timeout_at(_loop_deadline(relayed.deadline)):
                    got = await queue.get()
            except TimeoutError:
                relayed.ended = Ended("lost", error_code=ContainerExitedError.code)
                return
        else:
            got = queue.get_nowait()
        if isinstance(got, Ended):
            relayed.ended = got
            held = decode_response(got.result) if got.result is not None else None
            for part in held or ():
                yield part
            return
        relayed.consumed += 1
        relayed.read.set()
        if relayed.on_read is not None:
            relayed.on_read(relayed.consumed)
        yield got if isinstance(got, dict) else json_payload.decode(got)


def _loop_deadline(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock (at least a little ahead)."""
    loop = asyncio.get_running_loop()
    return loop.time() + max(deadline - time.monotonic(), 0.001)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""
