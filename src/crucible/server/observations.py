"""The autoscaler's observations: calls arriving, execution times and start times.

Written where the event happens: ``observe_arrivals`` by call submission and the web
gateway (any replica), ``observe_exec`` where containers' outputs are recorded (any
replica), ``observe_start`` by the scheduler leader when a container becomes ready. Read by
the scheduler leader's autoscaler (scheduler/loop.py) and the console's apps page.

Across replicas: arrivals and execution times are shared over the wake-up bus
(:meth:`Observations.share` takes in the other replicas'), so the leader's copy is whole
within a wake-up's delay; start times are the leader's own and start empty on a new leader.
Everything here starts empty after a restart, when the scheduler probes with one container
again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from crucible.core.autoscaler import ArrivalRate
from crucible.server.metrics import Metrics
from crucible.server.wakeups import Wakeups

__all__ = ["Observations"]

# Wake-up keys that carry autoscaler observations to the other replicas (Wakeups.share).
_ARRIVALS = "arrivals="
_EXEC = "exec="


@dataclass
class Observations:
    wakeups: Wakeups
    metrics: Metrics
    now_ms: Callable[[], int]  # the server's clock, read at each use (tests replace it)
    # Calls per second per function.
    arrivals: dict[str, ArrivalRate] = field(default_factory=dict)
    # Mean execution time per function (exponentially weighted).
    exec_stats: dict[str, float] = field(default_factory=dict)
    # Mean container start time per function (exponentially weighted), the leader's own.
    start_stats: dict[str, float] = field(default_factory=dict)

    def observe_arrivals(self, function_id: str, n: int, now_ms: int) -> None:
        self._arrived(function_id, n, now_ms)
        self.metrics.accepted(n)
        # The scheduler leader may be another replica: its autoscaler needs every arrival.
        if self.wakeups.publish is not None:
            self.wakeups.share(_ARRIVALS, f"{function_id}:{n}")

    def _arrived(self, function_id: str, n: int, now_ms: int) -> None:
        rate = self.arrivals.get(function_id)
        if rate is None:
            rate = self.arrivals[function_id] = ArrivalRate()
        rate.observe(n, now_ms)

    def observe_start(self, function_id: str, ms: float) -> None:
        self.metrics.cold_start(ms / 1000)
        avg = self.start_stats.get(function_id)
        self.start_stats[function_id] = ms if avg is None else 0.8 * avg + 0.2 * ms

    def observe_exec(self, function_id: str, exec_ms: list[float]) -> None:
        self._executed(function_id, exec_ms)
        if exec_ms and self.wakeups.publish is not None:
            # As (mean, count): a batch of a thousand outputs is one short key.
            mean = sum(exec_ms) / len(exec_ms)
            self.wakeups.share(_EXEC, f"{function_id}:{mean:.3f}:{len(exec_ms)}")

    def _executed(self, function_id: str, exec_ms: list[float]) -> None:
        avg = self.exec_stats.get(function_id)
        for ms in exec_ms:
            avg = float(ms) if avg is None else 0.8 * avg + 0.2 * ms
        if avg is not None:
            self.exec_stats[function_id] = avg

    def share(self) -> None:
        """Take in other replicas' arrivals and execution times (observed wherever calls
        are submitted and outputs recorded)."""

        def arrived(value: str) -> None:
            function_id, _, n = value.rpartition(":")
            if n.isascii() and n.isdigit() and function_id:
                self._arrived(function_id, int(n), self.now_ms())

        def executed(value: str) -> None:
            parts = value.rsplit(":", 2)
            if len(parts) == 3 and parts[2].isascii() and parts[2].isdigit():
                with contextlib.suppress(ValueError):
                    mean = float(parts[1])
                    self._executed(parts[0], [mean] * min(int(parts[2]), 1_000))

        self.wakeups.on_remote(_ARRIVALS, arrived)
        self.wakeups.on_remote(_EXEC, executed)
