"""In-process wake-ups for long polls.

The database is the truth; these only cut latency. A waiter that is not woken (a wake-up was
lost) still re-reads the database after at most :data:`RECHECK_S`, so every long poll is a
loop of short waits. With replicas on PostgreSQL, :attr:`Wakeups.publish` is set
(server/wakeup_bus.py): every wake-up is also sent to the other replicas through
LISTEN/NOTIFY, and theirs arrive through :meth:`Wakeups.notify_local`.

Keys are opaque strings: ``fn:<function_id>`` (inputs queued), ``call:<call_id>`` (a call
finished), ``group:<group_id>``, ``host:<host_id>`` (work for an agent),
``container:<container_id>`` (a container should stop), ``retry:<function_id>:<ms>`` (a
retry becomes due then: its function's waiters are woken at that time), and ``scheduler``
(look now).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["RECHECK_S", "SCHEDULER_KEY", "Wakeups", "long_poll"]

RECHECK_S = 1.0
# "retry:FN:MS": a retry of FN's becomes due in MS ms (services/calls.py).
RETRY_PREFIX = "retry:"
# A function whose workers exchanged with this replica this recently has live containers (see
# Wakeups.work_queued): twice the exchange's long poll would be too long to notice a cold start;
# a worker parked elsewhere through a balancer shows up here every few calls.
WORKERS_SEEN_S = 2.0
# The key that kicks the scheduler on the replica that leads it.
SCHEDULER_KEY = "scheduler"

T = TypeVar("T")


class Wakeups:
    def __init__(self, now_s: Callable[[], float] = time.monotonic) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._now_s = now_s
        # function id -> when one of its workers last exchanged with this replica
        self._workers_seen: dict[str, float] = {}
        self.scheduler = asyncio.Event()
        # Sends keys to the other replicas (after the commit that made them true); None in
        # one process. Called on the event loop; it must not block.
        self.publish: Callable[[Collection[str]], None] | None = None
        # Keys that carry a value from another replica ("prefix" + value) -> who applies it.
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # see bind()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the waiters run on (the server's, from its start). Wake-ups sent
        from a worker thread (routes declared ``def`` run in one: a pod's creation kicks the
        scheduler) are then handed to that loop, which wakes at once; an asyncio event set
        from another thread wakes nobody until the loop's next turn."""
        self._loop = loop

    def _off_loop(self) -> asyncio.AbstractEventLoop | None:
        """The bound loop, when called from another thread than the loop's."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        return None if running is loop else loop

    def notify(self, key: str) -> None:
        if (loop := self._off_loop()) is not None:
            loop.call_soon_threadsafe(self.notify, key)
            return
        for event in self._waiters.get(key, ()):
            event.set()
        if self.publish is not None:
            self.publish((key,))

    def notify_many(self, keys: Iterable[str]) -> None:
        unique = set(keys)
        if (loop := self._off_loop()) is not None:
            if unique:
                loop.call_soon_threadsafe(self.notify_many, unique)
            return
        self.notify_local(unique)
        if self.publish is not None and unique:
            self.publish(unique)

    def on_remote(self, prefix: str, handler: Callable[[str], None]) -> None:
        """Another replica's keys that start with ``prefix`` (sent with :meth:`share`) are
        handed to ``handler`` without the prefix, instead of waking anyone."""
        self._handlers[prefix] = handler

    def share(self, prefix: str, value: str) -> None:
        """Tell the other replicas ``value`` (a small string) for their ``prefix`` handler;
        nothing in one process."""
        if self.publish is not None:
            self.publish((prefix + value,))

    def notify_local(self, keys: Iterable[str]) -> None:
        """Wake this process's waiters on ``keys`` (another replica's wake-ups land here)."""
        for key in keys:
            if key == SCHEDULER_KEY:
                self.scheduler.set()
                continue
            if key.startswith(RETRY_PREFIX):
                self._wake_later(key)
                continue
            if self._handlers and "=" in key:
                prefix = key[: key.index("=") + 1]
                handler = self._handlers.get(prefix)
                if handler is not None:
                    handler(key[len(prefix) :])
                    continue
            for event in self._waiters.get(key, ()):
                event.set()

    def _wake_later(self, key: str) -> None:
        """``retry:FN:MS``: the function's calls become claimable in MS milliseconds (a retry
        after its delay): its idle containers are woken then (each replica wakes its own)."""
        function_id, _, delay = key[len(RETRY_PREFIX) :].rpartition(":")
        if not function_id or not (delay.isascii() and delay.isdigit()):
            return
        loop: asyncio.AbstractEventLoop | None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop
        if loop is None or loop.is_closed():
            return  # no loop to wait on: the recheck finds the call
        key = f"fn:{function_id}"

        def wake() -> None:
            if self.has_waiters(key):
                for event in self._waiters.get(key, ()):
                    event.set()
            else:  # no idle container here: the scheduler (where it leads) looks now
                self.scheduler.set()

        # + a little: the call must be due when the woken container looks.
        loop.call_later(int(delay) / 1000 + 0.005, wake)

    def waiting_keys(self) -> list[str]:
        """Every key someone waits on here, and the scheduler's."""
        return [*self._waiters, SCHEDULER_KEY]

    def kick_scheduler(self) -> None:
        if (loop := self._off_loop()) is not None:
            loop.call_soon_threadsafe(self.kick_scheduler)
            return
        self.scheduler.set()
        if self.publish is not None:
            self.publish((SCHEDULER_KEY,))

    def has_waiters(self, key: str) -> bool:
        return bool(self._waiters.get(key))

    def worker_seen(self, function_id: str) -> None:
        """A container of the function exchanged with this replica just now (it is alive)."""
        self._workers_seen[function_id] = self._now_s()

    def work_queued(self, function_id: str) -> None:
        """Inputs of a function became claimable: wake its idle containers; when none is
        waiting, the scheduler must look now (a cold start) rather than at its next tick.

        With replicas, the containers may wait on another one: the key goes to all of them.
        The scheduler is kicked too unless the function's workers exchanged with this replica
        within :data:`WORKERS_SEEN_S`: then it has live containers, one parked elsewhere
        takes the work, and a tick per call (the leader's most expensive pass) would be
        wasted; the scheduler's own period still scales a busy function up."""
        key = f"fn:{function_id}"
        if self.has_waiters(key):
            for event in self._waiters.get(key, ()):
                event.set()
        elif self.publish is None:
            self.scheduler.set()
        else:
            seen = self._workers_seen.get(function_id)
            if seen is not None and self._now_s() - seen < WORKERS_SEEN_S:
                self.publish((key,))
                return
            self._workers_seen.pop(function_id, None)
            # Another replica may hold the parked containers, and another the scheduler.
            self.scheduler.set()
            self.publish((key, SCHEDULER_KEY))

    @contextmanager
    def listen(self, *keys: str) -> Iterator[asyncio.Event]:
        """An event set when any of ``keys`` is notified while the block runs."""
        event = asyncio.Event()
        for key in keys:
            self._waiters.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[key]


async def long_poll(
    wakeups: Wakeups,
    keys: Iterable[str],
    check: Callable[[], T | None],
    timeout_s: float,
    *,
    checked: bool = False,
) -> T | None:
    """Call ``check`` until it returns something other than None, waking on ``keys``; None
    when ``timeout_s`` passes first. ``check`` reads committed state, and the event is cleared
    before each check, so a notification can never fall between a check and the wait.

    ``checked=True`` skips the first check: the caller has just read the same state without
    yielding to the event loop since, so no notification can have been missed in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with wakeups.listen(*keys) as event:
        first = True
        while True:
            event.clear()
            if not (first and checked):
                result = check()
                if result is not None:
                    return result
            first = False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, RECHECK_S))
