"""Hosts' heartbeats, written to the store in batches.

Every agent syncs about once a second; writing ``hosts.last_seen_ms`` in each sync's own
transaction made a write transaction per host per second (1,600 a second at 100,000 GPUs),
each waiting on the store's write lock behind the scheduler's tick. Instead a sync notes
when it saw its host here, and this process writes every host it saw in one statement once
:attr:`Heartbeats.flush_every_ms` has passed since the oldest unwritten one (the sync that
finds it due writes them), and the scheduler leader writes them at the start of each tick,
before it looks for silent hosts and meters containers up to their host's last sync.

A heartbeat is not an accepted request: one lost in a crash only makes its host look up to
``flush_every_ms`` older, far less than ``CRUCIBLE_HOST_TIMEOUT_S``. Anything else a sync
changes (a host that was lost coming back, container reports) is written in the sync's own
transaction, as before.
"""

from __future__ import annotations

import threading

__all__ = ["FLUSH_EVERY_MS", "Heartbeats"]

# Short against the host timeout (15 s by default) and the metering interval (10 s): the
# store's view of a host lags its last sync by about this much at most.
FLUSH_EVERY_MS = 1_000


class Heartbeats:
    """When each host last synced with this process, not yet written to the store.
    Thread-safe: syncs run in worker threads."""

    def __init__(self, flush_every_ms: int = FLUSH_EVERY_MS) -> None:
        self.flush_every_ms = flush_every_ms
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._oldest_ms: int | None = None

    def seen(self, host_id: str, now_ms: int) -> None:
        with self._lock:
            if now_ms > self._seen.get(host_id, -1):
                self._seen[host_id] = now_ms
            if self._oldest_ms is None:
                self._oldest_ms = now_ms

    def due(self, now_ms: int) -> bool:
        """Whether the oldest unwritten heartbeat is ``flush_every_ms`` old."""
        oldest = self._oldest_ms
        return oldest is not None and now_ms - oldest >= self.flush_every_ms

    def take(self) -> dict[str, int]:
        """Every unwritten heartbeat (host id -> ms), now the caller's to write."""
        with self._lock:
            seen, self._seen, self._oldest_ms = self._seen, {}, None
        return seen

    def give_back(self, seen: dict[str, int]) -> None:
        """Heartbeats taken whose write failed (its transaction rolled back): kept for the
        next write, unless a newer one came meanwhile."""
        if not seen:
            return
        with self._lock:
            for host_id, ms in seen.items():
                if ms > self._seen.get(host_id, -1):
                    self._seen[host_id] = ms
            if self._oldest_ms is None:
                self._oldest_ms = min(seen.values())

    def __len__(self) -> int:
        return len(self._seen)
