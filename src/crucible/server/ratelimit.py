"""Per-token rate limits: a token bucket per (limit, token), on the injected clock.

Each token may send ``rate_per_s`` requests per second sustained and ``burst`` at once; past
that a request raises :class:`~crucible.errors.RateLimitedError` with the seconds until one
more would be let in (the server answers 429 with ``Retry-After``). The buckets live in this
process: with several API replicas each enforces its own share (documented in
docs/operators.md). Buckets that have refilled completely are forgotten, so the table holds
only tokens active within the last ``burst / rate_per_s`` seconds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from crucible.errors import RateLimitedError

__all__ = ["RateLimiter"]

# Forget full buckets when the table grows past this (a sweep is O(buckets)).
_SWEEP_AT = 10_000


@dataclass
class _Bucket:
    tokens: float
    at_ms: int


class RateLimiter:
    """One limit (e.g. submits) over every token. ``rate_per_s <= 0`` disables it."""

    def __init__(self, what: str, rate_per_s: float, burst: int, setting: str) -> None:
        self.what = what
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.setting = setting
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now_ms: int) -> None:
        """Count one request of ``key`` (a token id) at ``now_ms``; raise
        :class:`RateLimitedError` when its bucket is empty (the request is not counted)."""
        if self.rate_per_s <= 0:
            return
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= _SWEEP_AT:
                    self._sweep(now_ms)
                b = self._buckets[key] = _Bucket(float(self.burst), now_ms)
            else:
                elapsed_s = max(0, now_ms - b.at_ms) / 1000
                b.tokens = min(float(self.burst), b.tokens + elapsed_s * self.rate_per_s)
                b.at_ms = max(b.at_ms, now_ms)
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return
            wait_s = (1.0 - b.tokens) / self.rate_per_s
        raise RateLimitedError(
            f"too many {self.what} with this token: at most {self.rate_per_s:g} per second "
            f"(bursts of {self.burst}); retry after {wait_s:.3f} s. The operator sets the limit "
            f"({self.setting}).",
            retry_after_s=wait_s,
        )

    def _sweep(self, now_ms: int) -> None:
        full_after_ms = self.burst / self.rate_per_s * 1000
        for key in [k for k, b in self._buckets.items() if now_ms - b.at_ms >= full_after_ms]:
            del self._buckets[key]
