"""Direct hand-off of new inputs to idle containers.

A worker whose exchange finds nothing to do parks here while it long-polls. When inputs for
its function arrive, the request that accepts them inserts them already running on parked
containers (one transaction) and hands them over in memory: the worker's request returns
without reading the database, and a ``.remote()`` costs two round trips in all.

Like :mod:`wakeups`, this is an in-process shortcut over the database: a parked worker that
is never handed anything still finds queued inputs when its long poll re-reads the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from crucible.protocol.containers import InputAssignment

__all__ = ["Dispatcher", "Parked"]


@dataclass(eq=False)
class Parked:
    container_id: str
    function_id: str
    want: int
    event: asyncio.Event
    handed: list[InputAssignment] = field(default_factory=list)


class Dispatcher:
    def __init__(self) -> None:
        self._idle: dict[str, dict[str, Parked]] = {}
        # Containers that must not be handed more now although parked: those whose web
        # channel runs as many requests as they take at once (server/web_channel.py).
        self.saturated: Callable[[str], bool] = lambda _container_id: False

    def park(self, parked: Parked) -> None:
        self._idle.setdefault(parked.function_id, {})[parked.container_id] = parked

    def unpark(self, parked: Parked) -> None:
        idle = self._idle.get(parked.function_id)
        if idle is not None and idle.get(parked.container_id) is parked:
            del idle[parked.container_id]
            if not idle:
                del self._idle[parked.function_id]

    def take(self, function_id: str, inputs: int) -> list[Parked]:
        """Remove and return parked containers of a function, enough to want ``inputs``
        (never one that is :attr:`saturated`)."""
        idle = self._idle.get(function_id)
        taken: list[Parked] = []
        if not idle:
            return taken
        for container_id in reversed(list(idle)):  # the last parked first, as before
            if inputs <= 0:
                break
            if self.saturated(container_id):
                continue
            parked = idle.pop(container_id)
            taken.append(parked)
            inputs -= parked.want
        if not idle:
            del self._idle[function_id]
        return taken
