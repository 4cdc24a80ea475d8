"""The autoscaler: how many containers a function should have now, and why (pure core).

Inputs are what the scheduler knows about a function (its queue, its calls in flight, how
fast calls arrive, how long one takes, how long a container takes to start) and the
builder's policy (``min_containers``, ``max_containers``, ``buffer_containers``). The answer
is a number and a sentence saying which term decided it, which the scheduler logs when it
changes. Nothing here reads a clock or does I/O.

The rule. With ``est`` the estimated execution time of one call (the measured mean, or the
age of the oldest running call before any finished) and ``per`` the inputs one container
handles at once (1 today):

- *backlog*: drain queued + running calls within ``target_drain_ms``:
  ``ceil((queued + running) * est / target_drain_ms / per)``, never more containers than
  calls;
- *arrivals*: keep up with the arrival rate (Little's law), plus the calls that arrive
  while a new container starts: ``rate * (est + start_ms) / per``, rounded to the nearest
  (so a trickle of calls keeps nothing warm and the function scales to zero);
- *probe*: with work but no estimate yet, one container;
- then ``buffer_containers`` idle ones on top while the app runs (warm capacity for bursts),
  at least ``min_containers`` (kept warm even with no work), at most ``max_containers``.

Scaling down is the scheduler core's: containers above the number that have been idle for
the function's scale-down window are stopped, never below ``min_containers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ArrivalRate", "Load", "Scale", "ScalingPolicy", "decide"]


@dataclass(frozen=True)
class ScalingPolicy:
    min_containers: int = 0
    max_containers: int = 16
    buffer_containers: int = 0
    target_drain_ms: int = 2_000
    inputs_per_container: int = 1


@dataclass(frozen=True)
class Load:
    queued: int
    running: int
    arrivals_per_s: float = 0.0
    avg_exec_ms: float | None = None
    oldest_running_age_ms: int | None = None
    start_ms: float = 0.0  # how long a container takes to become ready (0: unknown)
    active: bool = True  # the app runs (a stopped app wants nothing)


@dataclass(frozen=True)
class Scale:
    containers: int
    reason: str


def decide(policy: ScalingPolicy, load: Load) -> Scale:
    """The number of containers the function should have now, with the reason."""
    if not load.active:
        return Scale(0, "app stopped")
    per = max(1, policy.inputs_per_container)
    work = load.queued + load.running
    if load.avg_exec_ms is not None:
        est = load.avg_exec_ms
    elif load.oldest_running_age_ms is not None:
        est = float(load.oldest_running_age_ms)
    else:
        est = 0.0
    terms: list[tuple[int, str]] = []
    if work and est <= 0:
        terms.append((1, f"{work} call(s) and no execution time measured yet: one probe"))
    if work and est > 0:
        n = min(math.ceil(work * est / policy.target_drain_ms / per), math.ceil(work / per))
        terms.append(
            (
                n,
                f"backlog: {work} call(s) x {est:.0f} ms to drain in {policy.target_drain_ms} ms",
            )
        )
    if load.arrivals_per_s > 0 and est > 0:
        # Rounded to the nearest: a trickle (a call a minute) keeps no container warm, so a
        # function still scales to zero between sporadic calls.
        n = math.floor(load.arrivals_per_s * (est + load.start_ms) / 1000 / per + 0.5)
        terms.append(
            (
                n,
                f"arrivals: {load.arrivals_per_s:.1f}/s x ({est:.0f} ms run + "
                f"{load.start_ms:.0f} ms start)",
            )
        )
    need, why = max(terms, default=(0, "no work"))
    want = need + policy.buffer_containers
    if policy.buffer_containers:
        why += f", +{policy.buffer_containers} buffer"
    if want < policy.min_containers:
        want, why = policy.min_containers, f"min_containers={policy.min_containers} ({why})"
    if want > policy.max_containers:
        want, why = policy.max_containers, f"max_containers={policy.max_containers} ({why})"
    return Scale(want, why)


class ArrivalRate:
    """Calls per second, exponentially weighted with time constant ``tau_ms`` (the caller
    passes the time)."""

    def __init__(self, tau_ms: float = 10_000.0) -> None:
        self.tau_ms = tau_ms
        self._rate_per_ms = 0.0
        self._at_ms: int | None = None

    def observe(self, n: int, now_ms: int) -> None:
        self._rate_per_ms = self._decayed(now_ms) + n / self.tau_ms
        self._at_ms = now_ms

    def per_s(self, now_ms: int) -> float:
        return self._decayed(now_ms) * 1000

    def _decayed(self, now_ms: int) -> float:
        if self._at_ms is None:
            return 0.0
        dt = max(0, now_ms - self._at_ms)
        return self._rate_per_ms * math.exp(-dt / self.tau_ms)
