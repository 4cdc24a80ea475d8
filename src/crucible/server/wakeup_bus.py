"""Wake-ups across replicas through PostgreSQL's LISTEN/NOTIFY.

Each replica on PostgreSQL keeps two connections of its own (outside the engine's pool): one
that LISTENs on :data:`CHANNEL` and feeds what arrives into its local
:class:`~crucible.server.wakeups.Wakeups`, and one that publishes. Publishing is batched: the
keys notified during one pass of the event loop leave in one statement, several keys per
notification, each payload under PostgreSQL's 8,000-byte limit. A replica skips its own
notifications (it woke its own waiters already).

Lost notifications (a connection dropped and re-made) cost latency only: every long poll
re-reads the store at least once a second and the scheduler ticks on its own timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Collection

import psycopg
from sqlalchemy import Engine

from crucible.server.wakeups import Wakeups

__all__ = ["CHANNEL", "MAX_PAYLOAD_BYTES", "PgWakeupBus", "pack"]

log = logging.getLogger("crucible.wakeups")

CHANNEL = "crucible_wakeups"
# PostgreSQL refuses payloads of 8,000 bytes or more; keep a margin for the origin prefix.
MAX_PAYLOAD_BYTES = 7_000
_RECONNECT_S = 1.0


def pack(origin: str, keys: Collection[str], limit: int = MAX_PAYLOAD_BYTES) -> list[str]:
    """Payloads ``origin\\nkey\\nkey...``, each at most ``limit`` bytes. Keys are ids and
    short values, far under the limit each; one that is not (or holds a newline) is left
    out, since PostgreSQL would refuse the whole statement."""
    payloads: list[str] = []
    head = origin
    current = head
    for key in sorted(keys):
        if "\n" in key or len(head) + 1 + len(key.encode()) > limit:
            log.warning("wake-up key of %d bytes not sent to other replicas", len(key))
            continue
        if len(current) + 1 + len(key.encode()) > limit and current != head:
            payloads.append(current)
            current = head
        current += "\n" + key
    if current != head:
        payloads.append(current)
    return payloads


def _unpack(payload: str) -> tuple[str, list[str]]:
    origin, _, rest = payload.partition("\n")
    return origin, rest.split("\n") if rest else []


class PgWakeupBus:
    """Connects ``wakeups`` of this replica (named ``origin``) to every other replica's."""

    def __init__(self, engine: Engine, wakeups: Wakeups, origin: str) -> None:
        self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.wakeups = wakeups
        self.origin = origin
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.received = 0  # notifications from other replicas (for tests and metrics)
        # Whether another replica is alive (the elector says, server/leadership.py): alone,
        # a replica publishes nothing, and one server on PostgreSQL pays nothing for this.
        self.others = True
        self._listening = asyncio.Event()

    async def start(self) -> None:
        """Start listening and publishing; returns once the listener is subscribed."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            self._loop.create_task(self._listen(), name="wakeup-listen"),
            self._loop.create_task(self._publish(), name="wakeup-publish"),
        ]
        self.wakeups.publish = self.publish
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=10)

    async def stop(self) -> None:
        self.wakeups.publish = None
        self._closing = True
        self._flush.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def publish(self, keys: Collection[str]) -> None:
        """Queue ``keys`` for the other replicas (any thread; never blocks)."""
        if not self.others:
            return
        with self._lock:
            first = not self._pending
            self._pending.update(keys)
        if first and self._loop is not None:
            if _on_loop(self._loop):
                self._flush.set()
            else:
                self._loop.call_soon_threadsafe(self._flush.set)

    async def _publish(self) -> None:
        conn: psycopg.AsyncConnection[object] | None = None
        try:
            while not self._closing:
                await self._flush.wait()
                self._flush.clear()
                with self._lock:
                    keys, self._pending = self._pending, set()
                if not keys:
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                    await conn.execute(
                        "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                        (CHANNEL, pack(self.origin, keys)),
                    )
                except (psycopg.Error, OSError):
                    log.warning("could not publish wake-ups; other replicas see them late")
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    await asyncio.sleep(_RECONNECT_S)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _listen(self) -> None:
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            except (psycopg.Error, OSError):
                log.warning("could not connect the wake-up listener; retrying")
                await asyncio.sleep(_RECONNECT_S)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                # Wake-ups may have been missed while not listening: everyone looks again.
                self.wakeups.notify_local(self.wakeups.waiting_keys())
                async for note in conn.notifies():
                    origin, keys = _unpack(note.payload)
                    if origin == self.origin:
                        continue
                    self.received += 1
                    self.wakeups.notify_local(keys)
            except (psycopg.Error, OSError):
                log.warning("the wake-up listener lost its connection; reconnecting")
                await asyncio.sleep(_RECONNECT_S)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
