"""What a run measures over virtual time: utilisation (exact time average of busy GPUs),
queueing delay, queue length and clearing prices, in windows of ``sample_ms``; and gauges
the driver reads at each sample (the placement kind: GPU allocation and fragmentation).

Waits are counted two ways. ``queueing_delay`` is the wait of the tasks that started.
``waits`` adds the *censored* waits of the tasks that never started: a task that gave up
counts the time from its arrival until it gave up (its deadline), and a task still waiting
when the run ends counts the time until the end. A run where half the tasks gave up thus
shows their waits, not 0 s. Tasks that no node could ever run are not counted: they never
wait (see :mod:`crucible.sim.feasibility`).

Pure bookkeeping: the drivers tell it what happened and when.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["CENSORING", "Recorder", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank), or ``None`` for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


CENSORING = (
    "a task that gave up counts the time from its arrival until it gave up; a task still "
    "waiting at the end of the run counts the time until the end (at most until its deadline)"
)


# The series that are means over a sample window, and the digits each is rounded to.
_WINDOW_MEANS = {
    "utilisation": 6,
    "queue_delay_s": 3,
    "wait_with_gave_up_s": 3,
    "price_on_demand": 6,
    "price_interruptible": 6,
}


@dataclass
class Recorder:
    capacity_gpus: float
    gauges: tuple[str, ...] = ()  # extra series the driver reads at each sample
    busy: float = 0.0  # GPUs in use now (shares count as fractions)
    _last_ms: int = 0
    _area: float = 0.0  # GPU-ms since the run started
    _win_area: float = 0.0
    _win_start: int = 0
    _win_delay: list[float] = field(default_factory=lambda: [0.0, 0.0])
    _win_price: dict[str, list[float]] = field(default_factory=dict)
    _win_all: list[float] = field(default_factory=lambda: [0.0, 0.0])
    delays_ms: list[int] = field(default_factory=list)
    gave_up_ms: list[int] = field(default_factory=list)  # censored waits: until giving up
    unfinished_ms: list[int] = field(default_factory=list)  # censored waits: until the end
    series: dict[str, list[float | None]] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "t_hours",
                "utilisation",
                "queued",
                "queue_delay_s",
                "wait_with_gave_up_s",
                "price_on_demand",
                "price_interruptible",
            )
        }
    )

    # What each window mean of the series was taken over (ms of the window for utilisation,
    # tasks for the waits, GPUs for the prices): :meth:`compact` merges windows by them.
    _weights: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _WINDOW_MEANS})

    def __post_init__(self) -> None:
        for g in self.gauges:
            self.series[g] = []

    def advance(self, now_ms: int) -> None:
        dt = now_ms - self._last_ms
        if dt > 0:
            self._area += self.busy * dt
            self._win_area += self.busy * dt
            self._last_ms = now_ms

    def add_busy(self, now_ms: int, gpus: float) -> None:
        """``gpus`` more (or, negative, fewer) GPUs in use from ``now_ms``."""
        self.advance(now_ms)
        self.busy += gpus

    def started(self, now_ms: int, arrival_ms: int) -> None:
        d = now_ms - arrival_ms
        self.delays_ms.append(d)
        self._win_delay[0] += d
        self._win_delay[1] += 1
        self._win_all[0] += d
        self._win_all[1] += 1

    def gave_up(self, at_ms: int, arrival_ms: int) -> None:
        """A task that never started gave up at ``at_ms``: a wait censored there."""
        d = max(0, at_ms - arrival_ms)
        self.gave_up_ms.append(d)
        self._win_all[0] += d
        self._win_all[1] += 1

    def still_waiting(self, end_ms: int, arrival_ms: int) -> None:
        """A task still waiting when the run ends: a wait censored at ``end_ms``."""
        self.unfinished_ms.append(max(0, end_ms - arrival_ms))

    def cleared(self, tier: str, price_micros: int, gpus: int) -> None:
        """A grant of ``gpus`` GPUs at ``price_micros`` per GPU-hour."""
        acc = self._win_price.setdefault(tier, [0.0, 0.0])
        acc[0] += price_micros * gpus
        acc[1] += gpus

    def sample(
        self, now_ms: int, queued: int, gauges: dict[str, float | None] | None = None
    ) -> None:
        """Close the window ending at ``now_ms``; ``gauges`` holds a value per gauge."""
        self.advance(now_ms)
        span = now_ms - self._win_start
        util = self._win_area / (span * self.capacity_gpus) if span and self.capacity_gpus else 0.0
        s = self.series
        s["t_hours"].append(now_ms / 3_600_000)
        s["utilisation"].append(round(util, 6))
        s["queued"].append(float(queued))
        n = self._win_delay[1]
        s["queue_delay_s"].append(round(self._win_delay[0] / n / 1000, 3) if n else None)
        m = self._win_all[1]
        s["wait_with_gave_up_s"].append(round(self._win_all[0] / m / 1000, 3) if m else None)
        for g in self.gauges:
            v = (gauges or {}).get(g)
            s[g].append(None if v is None else round(v, 6))
        for tier in ("on_demand", "interruptible"):
            acc = self._win_price.get(tier)
            s[f"price_{tier}"].append(round(acc[0] / acc[1] / 1e6, 6) if acc and acc[1] else None)
        w = self._weights
        w["utilisation"].append(float(span))
        w["queue_delay_s"].append(n)
        w["wait_with_gave_up_s"].append(m)
        for tier in ("on_demand", "interruptible"):
            w[f"price_{tier}"].append(self._win_price.get(tier, [0.0, 0.0])[1])
        self._win_area, self._win_start = 0.0, now_ms
        self._win_delay = [0.0, 0.0]
        self._win_all = [0.0, 0.0]
        self._win_price = {}

    def compact(self) -> None:
        """Merge the windows two by two (the first with the second, ...; an odd last one
        stays): a window mean becomes the mean over both windows (weighted by what each was
        taken over), a sampled value the later one. For a long run: the series stay under a
        fixed number of points while the engine doubles its window."""
        for k, values in self.series.items():
            merged: list[float | None] = []
            weights = self._weights.get(k)
            wm: list[float] = []
            for i in range(0, len(values) - 1, 2):
                if weights is None:
                    merged.append(values[i + 1])
                    continue
                w = weights[i] + weights[i + 1]
                total = sum(
                    (v or 0.0) * weights[j] for j, v in ((i, values[i]), (i + 1, values[i + 1]))
                )
                merged.append(round(total / w, _WINDOW_MEANS[k]) if w else values[i + 1])
                wm.append(w)
            if len(values) % 2:
                merged.append(values[-1])
                if weights is not None:
                    wm.append(weights[-1])
            self.series[k] = merged
            if weights is not None:
                self._weights[k] = wm

    def mean_utilisation(self, now_ms: int) -> float:
        self.advance(now_ms)
        return self._area / (now_ms * self.capacity_gpus) if now_ms and self.capacity_gpus else 0.0

    def delay_summary(self) -> dict[str, float | None]:
        d = self.delays_ms
        return {
            "started": len(d),
            "mean_s": round(sum(d) / len(d) / 1000, 3) if d else None,
            "p50_s": _s(percentile(d, 0.5)),
            "p99_s": _s(percentile(d, 0.99)),
            "waited_share": round(sum(1 for x in d if x > 0) / len(d), 4) if d else None,
        }

    def wait_summary(self) -> dict[str, object]:
        """Waits of every task that arrived and could run, censored ones included."""
        every = [*self.delays_ms, *self.gave_up_ms, *self.unfinished_ms]

        def stats(d: Sequence[int]) -> dict[str, float | None]:
            return {
                "count": len(d),
                "mean_s": round(sum(d) / len(d) / 1000, 3) if d else None,
                "p50_s": _s(percentile(d, 0.5)),
                "p99_s": _s(percentile(d, 0.99)),
            }

        return {
            "all": stats(every),
            "started": stats(self.delays_ms),
            "gave_up": stats(self.gave_up_ms),
            "still_waiting_at_end": stats(self.unfinished_ms),
            "censored_share": round(1 - len(self.delays_ms) / len(every), 4) if every else None,
            "censoring": CENSORING,
        }


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)
