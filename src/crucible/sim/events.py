"""The simulator's events and its virtual clock: a heap ordered by (time, sequence).

Events at the same millisecond run in the order they were scheduled, so a run is a pure
function of its scenario and seed. Time never goes backwards: scheduling an event before the
current time raises ``ValueError``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from crucible.sim.workload import Job

__all__ = ["Arrive", "Event", "EventQueue", "Finish", "NextArrival", "Sample"]


@dataclass(frozen=True, slots=True)
class NextArrival:
    """Source ``source`` has its next job due: take it and ask for the one after."""

    source: int


@dataclass(frozen=True, slots=True)
class Arrive:
    """A job asks for capacity (first time, or again after a preemption)."""

    job: Job


@dataclass(frozen=True, slots=True)
class Finish:
    """A job's work is done, unless its run was cut short since (``epoch`` is stale)."""

    job: Job
    epoch: int


@dataclass(frozen=True, slots=True)
class Sample:
    """Close a metrics window."""


Event = NextArrival | Arrive | Finish | Sample


class EventQueue:
    """The virtual clock and its pending events."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Event]] = []
        self._seq = 0
        self.now_ms = 0
        self.processed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at_ms: int, event: Event) -> None:
        if at_ms < self.now_ms:
            raise ValueError(f"event at {at_ms} ms is before the clock ({self.now_ms} ms)")
        heapq.heappush(self._heap, (at_ms, self._seq, event))
        self._seq += 1

    def peek_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def peek(self) -> Event | None:
        """The next event, left in the queue (``None`` when none is pending)."""
        return self._heap[0][2] if self._heap else None

    def pop(self) -> Event:
        """The next event; the clock moves to its time."""
        at, _, event = heapq.heappop(self._heap)
        self.now_ms = at
        self.processed += 1
        return event
