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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from crucible.errors import RateLimitedError
from crucible.server.auth import Principal
from crucible.settings import Settings

__all__ = ["Limits", "RateLimiter"]

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


@dataclass
class Limits:
    """This process's per-token request limits, from the settings. Taken by the routes they
    limit (calls, jobs, the web gateway, OpenAI-compatible endpoints, market quotes); each
    replica enforces its own share, and nothing is shared between replicas."""

    settings: Settings
    now_ms: Callable[[], int]  # the server's clock, read at each use (tests replace it)

    @cached_property
    def submit(self) -> RateLimiter:
        """Per-token limit of submit requests (calls, job runs, web endpoint requests)."""
        s = self.settings
        return RateLimiter(
            "submit requests", s.submit_rate_per_s, s.submit_burst, "CRUCIBLE_SUBMIT_RATE_PER_S"
        )

    @cached_property
    def quote(self) -> RateLimiter:
        """Per-token limit of market quotes."""
        s = self.settings
        return RateLimiter("quotes", s.quote_rate_per_s, s.quote_burst, "CRUCIBLE_QUOTE_RATE_PER_S")

    def take(self, limiter: RateLimiter, principal: Principal) -> None:
        """Count one request of the principal's token against ``limiter`` (429 past it)."""
        key = principal.token_id or f"{principal.scope}:{principal.account_id}"
        limiter.take(key, self.now_ms())
