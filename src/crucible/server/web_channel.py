"""Web channels: the WebSocket each warm container of a web endpoint keeps open to this
server (protocol/web_channel.py), on which the gateway's fast path hands it requests.

A request handed on a channel is a :class:`~crucible.server.web_relay.Relayed` like one
handed to a parked exchange, so everything that counts relayed requests (autoscaling, busy
containers, ``x-crucible-call-id``, the 504 when the container goes) sees it the same way;
what differs is the wire: one frame from the server, and the response's frames back on the
same connection, with no long poll to answer and no ``/items`` or ``/exchange`` to post.

A container takes at most ``slots`` requests at once on its channel (its function's
concurrency); when every channel of the endpoint is full, the gateway tries a parked
exchange, then a call. When a channel closes (the worker exited or was killed, its host
lost), every request it was running ends at once as lost: the client gets a 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crucible.errors import ContainerExitedError
from crucible.protocol.ids import new_id
from crucible.protocol.web_channel import ACK_EVERY, BUSY, decode_frame, encode_frame
from crucible.server.web_relay import GRACE_S, Ended, Relayed, WebRelay

__all__ = ["Channel", "WebChannels"]

log = logging.getLogger("crucible.web_channel")


@dataclass(eq=False)
class Channel:
    """One container's open channel. ``send`` writes one message (the route's WebSocket)."""

    container_id: str
    function_id: str
    slots: int
    send: Any  # Callable[[bytes], Awaitable[None]]
    running: dict[str, Relayed] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    # Calls the container's exchange was given and has not finished: they take slots as
    # requests do. Counted here when handed, before the worker knows of them (a request on
    # the channel in between would otherwise find the worker idle and run beside the call),
    # less the outputs it reports; the worker's own count at each exchange only lowers it.
    calls: int = 0
    open: bool = True
    # Whether work was turned away from the container's exchange while the channel was full
    # (then its exchange looks again when a slot frees; else nothing waits on it).
    turned_away: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sending: set[asyncio.Task[None]] = field(default_factory=set)

    def load(self) -> int:
        """Slots taken: requests on the channel and calls from the exchange."""
        return len(self.running) + self.calls

    async def write(self, frame: bytes) -> None:
        """Send one frame; a channel that went away is marked closed (its reader ends the
        requests it was running)."""
        if not self.open:
            return
        try:
            async with self._lock:
                await self.send(frame)
        except Exception:  # the connection is gone: the serving loop sees it too
            self.open = False

    def later(self, frame: bytes) -> None:
        """Send ``frame`` from a task of its own (for callers that cannot wait)."""
        task = asyncio.ensure_future(self.write(frame))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


class WebChannels:
    """The channels open to this server process, by function and container."""

    def __init__(self, relay: WebRelay) -> None:
        self._relay = relay
        self._by_function: dict[str, dict[str, Channel]] = {}
        self._by_container: dict[str, Channel] = {}
        # Told a container's id when its channel, full until now, frees a slot (its parked
        # exchange may take queued calls again).
        self.on_free: Callable[[str], None] = lambda _container_id: None

    def attach(self, channel: Channel) -> None:
        """Register an open channel (a reconnecting container replaces its older one)."""
        old = self._by_function.get(channel.function_id, {}).get(channel.container_id)
        if old is not None:
            self.detach(old)
        self._by_function.setdefault(channel.function_id, {})[channel.container_id] = channel
        self._by_container[channel.container_id] = channel

    def detach(self, channel: Channel) -> None:
        """The channel closed: what it was running ends now, as lost (504)."""
        channel.open = False
        mine = self._by_function.get(channel.function_id)
        if mine is not None and mine.get(channel.container_id) is channel:
            del mine[channel.container_id]
            if not mine:
                del self._by_function[channel.function_id]
        if self._by_container.get(channel.container_id) is channel:
            del self._by_container[channel.container_id]
        for relayed in list(channel.running.values()):
            self._relay.finish(relayed, Ended("lost", error_code=ContainerExitedError.code))
        channel.running.clear()

    def close_container(self, container_id: str) -> None:
        """The container exited (its agent said so): forget its channel."""
        for mine in list(self._by_function.values()):
            channel = mine.get(container_id)
            if channel is not None:
                self.detach(channel)

    def free(self, function_id: str) -> Channel | None:
        """An open channel of the function with a free slot, the least loaded first."""
        best: Channel | None = None
        best_load = 0
        for channel in self._by_function.get(function_id, {}).values():
            load = channel.load()
            if channel.open and load < channel.slots and (best is None or load < best_load):
                best, best_load = channel, load
                if not load:
                    break
        return best

    def saturated(self, container_id: str) -> bool:
        """Whether the container's channel runs as many requests as it takes at once: then
        its exchange is given no calls (it would run more than its function allows), and is
        woken when a slot frees."""
        channel = self._by_container.get(container_id)
        if channel is None or not channel.open or channel.load() < channel.slots:
            return False
        channel.turned_away = True
        return True

    def calls_held(self, container_id: str, count: int) -> None:
        """The container's exchange says it holds ``count`` calls not finished (those it
        reports finished left out). Its count may be behind (an output its reporter sent
        meanwhile), never short of one on the wire (none is handed while it asks): it only
        lowers this one."""
        channel = self._by_container.get(container_id)
        if channel is not None and count < channel.calls:
            self._set_calls(channel, max(0, count))

    def calls_given(self, container_id: str, count: int) -> None:
        """``count`` calls were handed to the container's exchange (``count`` < 0: that
        many it reported finished)."""
        channel = self._by_container.get(container_id)
        if channel is not None and count:
            self._set_calls(channel, max(0, channel.calls + count))

    def _set_calls(self, channel: Channel, calls: int) -> None:
        full = channel.load() >= channel.slots
        channel.calls = calls
        self._maybe_freed(channel, full)

    def _maybe_freed(self, channel: Channel, was_full: bool) -> None:
        """A slot of a channel that was full freed (a request or a call ended): its
        exchange looks again, but only when work was turned away from it meanwhile (a
        database read otherwise, for a slot nobody was waiting for)."""
        if was_full and channel.load() < channel.slots and channel.open and channel.turned_away:
            channel.turned_away = False
            self.on_free(channel.container_id)

    def serves(self, function_id: str) -> bool:
        """Whether any container of the function has a channel open here (then requests go
        on channels or become calls, never to a parked exchange of those containers)."""
        return bool(self._by_function.get(function_id))

    async def hand(
        self,
        channel: Channel,
        account_id: str,
        http: dict[str, Any],
        body: bytes,
        timeout_s: float,
    ) -> Relayed:
        """Send the request on ``channel``; the relayed request its frames are delivered to."""
        relayed = Relayed(
            id=new_id("rq"),
            function_id=channel.function_id,
            container_id=channel.container_id,
            account_id=account_id,
            deadline=time.monotonic() + timeout_s + GRACE_S,
        )
        self._relay.track(relayed)
        channel.running[relayed.id] = relayed
        channel.acked[relayed.id] = 0

        def on_read(consumed: int) -> None:
            if channel.open and consumed - channel.acked.get(relayed.id, consumed) >= ACK_EVERY:
                channel.acked[relayed.id] = consumed
                frame = encode_frame({"t": "ack", "id": relayed.id, "n": consumed})
                channel.later(frame)

        def on_end() -> None:
            full = channel.load() >= channel.slots
            channel.running.pop(relayed.id, None)
            channel.acked.pop(relayed.id, None)
            self._maybe_freed(channel, full)

        relayed.on_read = on_read
        relayed.on_end = on_end
        header = {"t": "req", "id": relayed.id, "timeout_s": timeout_s, "http": http}
        await channel.write(encode_frame(header, body))
        if not channel.open:  # it went away first: nothing ran (the caller makes a call)
            self._relay.finish(relayed, Ended("undelivered"))
            self.detach(channel)
        return relayed

    def received(self, channel: Channel, message: bytes) -> None:
        """One frame from the worker: deliver it to its request's reader."""
        header, data = decode_frame(message)
        if header["t"] == "drain":  # the worker is stopping: nothing new for it
            channel.slots = 0
            return
        rid = str(header.get("id", ""))
        relayed = channel.running.get(rid)
        if relayed is None:
            return  # ended already (lost at its deadline, or an unknown id): dropped
        kind = header["t"]
        more = bool(header.get("more", False))
        if kind == "start":
            status = int(header["status"])
            headers = [(str(k), str(v)) for k, v in header.get("headers", [])]
            if more:
                self._relay.part(relayed, {"status": status, "headers": headers, "data": data})
            else:  # the whole response in one frame
                self._relay.part(relayed, {"status": status, "headers": headers, "whole": data})
        elif kind == "body":
            self._relay.part(relayed, {"data": data, "more": more})
        elif kind == "error" and header.get("code") == BUSY:  # not run: it becomes a call
            self._relay.finish(relayed, Ended("undelivered"))
            return
        elif kind == "error":
            more = False
            code = str(header.get("code") or "endpoint_error")
            log.info("web request %s failed in its app: %s", rid, header.get("message", ""))
            self._relay.finish(relayed, Ended("failed", error_code=code))
            return
        else:
            return
        if not more:
            self._relay.finish(relayed, Ended("succeeded"))
