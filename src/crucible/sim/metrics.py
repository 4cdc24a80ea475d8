"""What a run measures over virtual time: utilisation (exact time average of busy GPUs),
queueing delay, queue length and clearing prices, in windows of ``sample_ms``.

Pure bookkeeping: the drivers tell it what happened and when.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Recorder", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank), or ``None`` for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Recorder:
    capacity_gpus: float
    busy: float = 0.0  # GPUs in use now (shares count as fractions)
    _last_ms: int = 0
    _area: float = 0.0  # GPU-ms since the run started
    _win_area: float = 0.0
    _win_start: int = 0
    _win_delay: list[float] = field(default_factory=lambda: [0.0, 0.0])
    _win_price: dict[str, list[float]] = field(default_factory=dict)
    delays_ms: list[int] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "t_hours",
                "utilisation",
                "queued",
                "queue_delay_s",
                "price_on_demand",
                "price_interruptible",
            )
        }
    )

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

    def cleared(self, tier: str, price_micros: int, gpus: int) -> None:
        """A grant of ``gpus`` GPUs at ``price_micros`` per GPU-hour."""
        acc = self._win_price.setdefault(tier, [0.0, 0.0])
        acc[0] += price_micros * gpus
        acc[1] += gpus

    def sample(self, now_ms: int, queued: int) -> None:
        """Close the window ending at ``now_ms``."""
        self.advance(now_ms)
        span = now_ms - self._win_start
        util = self._win_area / (span * self.capacity_gpus) if span and self.capacity_gpus else 0.0
        s = self.series
        s["t_hours"].append(now_ms / 3_600_000)
        s["utilisation"].append(round(util, 6))
        s["queued"].append(float(queued))
        n = self._win_delay[1]
        s["queue_delay_s"].append(round(self._win_delay[0] / n / 1000, 3) if n else None)
        for tier in ("on_demand", "interruptible"):
            acc = self._win_price.get(tier)
            s[f"price_{tier}"].append(round(acc[0] / acc[1] / 1e6, 6) if acc and acc[1] else None)
        self._win_area, self._win_start = 0.0, now_ms
        self._win_delay = [0.0, 0.0]
        self._win_price = {}

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


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)
