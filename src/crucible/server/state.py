"""What every request handler and background loop of one server process shares.

With replicas (several processes on one PostgreSQL store) every field here is one process's;
the store is the truth. Each cache below says who owns it and how stale it may be on the
other replicas (docs/operators.md, "Running replicas"):

- request side, any replica, correct: ``container_accounts``, ``container_facts`` and
  ``claim_groups`` (facts that never change; a miss reads the store), ``host_seq`` (keyed
  by the agent process's registration), ``touched_ms`` (a write-rate limit),
  ``heartbeats`` (hosts' syncs not yet written: at most a second, server/heartbeats.py);
- request side, bounded-stale by a TTL: ``token_cache`` (5 s), ``credit_checked`` (2 s),
  ``web_endpoints`` (1 s);
- shared over the wake-up bus: ``items_consumed`` (a generator caller's progress);
- shared over the wake-up bus too: ``arrivals`` and ``exec_stats`` (the autoscaler's
  inputs, observed where calls are submitted and outputs recorded);
- the scheduler leader's, shared as it changes: ``waiting`` (why work waits);
- the scheduler leader's, empty or partial elsewhere: ``credit_blocked``, ``start_stats``,
  and the market's decisions (``market``: a follower's copy is re-read from the store when
  stale, for quotes and the book);
- this process only, by nature: ``wakeups``, ``dispatcher`` (hand-off to workers parked
  here), ``access`` (sessions whose client is connected here), ``metrics``, ``log_counts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from crucible.core.autoscaler import ArrivalRate
from crucible.server.auth import Principal
from crucible.server.blobs import BlobStore
from crucible.server.dispatch import Dispatcher
from crucible.server.heartbeats import Heartbeats
from crucible.server.metrics import Metrics
from crucible.server.ratelimit import RateLimiter
from crucible.server.relay import AccessRelay
from crucible.server.secretbox import SecretBox, load_secret_box
from crucible.server.services.market import LiveMarket
from crucible.server.wakeups import Wakeups
from crucible.server.web_channel import WebChannels
from crucible.server.web_relay import WebRelay
from crucible.settings import Settings

__all__ = ["Clock", "ServerState", "SystemClock", "load_or_create_secret"]

# Wake-up keys that carry autoscaler observations to the other replicas (Wakeups.share).
_ARRIVALS = "arrivals="
_EXEC = "exec="
_WAITING = "waiting="  # the scheduler leader's (scheduler/loop.py WAITING_PREFIX)
# As many as the SQLite engine's pool has connections: more only wait for the store.
_REGISTERING_AT_ONCE = 4


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass
class ServerState:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    secret: str
    clock: Clock = field(default_factory=SystemClock)
    wakeups: Wakeups = field(default_factory=Wakeups)
    # Access sessions waiting for their agent or spliced (exec, tunnels, SSH).
    access: AccessRelay = field(default_factory=AccessRelay)
    # account of each container ever verified: containers never change account.
    container_accounts: dict[str, str] = field(default_factory=dict)
    # token hash -> (principal tuple, expiry monotonic); short TTL so revocation bites fast.
    token_cache: dict[str, tuple[tuple[str, str, str], float]] = field(default_factory=dict)
    # Mean execution time per function (exponentially weighted), for the autoscaler; starts
    # empty after a restart, when the scheduler probes with one container again.
    exec_stats: dict[str, float] = field(default_factory=dict)
    # Newest sync sequence number applied per host (see protocol.hosts.HostSync.seq).
    host_seq: dict[str, int] = field(default_factory=dict)
    # Hosts' syncs seen here, written to the store in batches (server/heartbeats.py).
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    dispatcher: Dispatcher = field(default_factory=Dispatcher)
    # What never changes about a container (account, function, rate, timeout, retries).
    container_facts: dict[str, Any] = field(default_factory=dict)
    # Group of each call handed to a container, so recording its output reads nothing.
    claim_groups: dict[str, str | None] = field(default_factory=dict)
    # When each container's last_active_ms was last written (it is written at most 1/s).
    touched_ms: dict[str, int] = field(default_factory=dict)
    # Accounts refused new work (no credit, or past their daily cap) -> why; kept by the
    # scheduler when credits are required, read by call submission.
    credit_blocked: dict[str, str] = field(default_factory=dict)
    # Submission-time credit checks: account -> (valid until ms, refusal or None).
    credit_checked: dict[str, tuple[int, str | None]] = field(default_factory=dict)

    # The web gateway's resolved endpoints: (account, deployment, function) names ->
    # (valid until monotonic s, owner account id, function row). Cleared by deployment
    # changes here; another replica's change is seen within the short TTL.
    web_endpoints: dict[tuple[str, str, str], tuple[float, str, Any]] = field(default_factory=dict)
    # Web requests handed to a parked container in memory, with no call row (web_relay.py).
    web_relay: WebRelay = field(default_factory=WebRelay)
    # Generator calls: how many items each caller has read (the worker's back-pressure).
    items_consumed: dict[str, int] = field(default_factory=dict)
    # Log lines stored per container since this server started (for the per-container cap).
    log_counts: dict[str, int] = field(default_factory=dict)
    # Calls per second per function (for the autoscaler), and container start times.
    arrivals: dict[str, ArrivalRate] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # Other replicas alive on this store (the elector counts them, server/leadership.py). The
    # web gateway's in-memory fast path (server/web_relay.py) runs only while this is 0: a
    # container's next requests may reach another replica behind a balancer.
    other_replicas: int = 0
    start_stats: dict[str, float] = field(default_factory=dict)
    # Why a function's queued calls are not placed, as of the last scheduler tick (function
    # id -> reason; replaced whole each tick). Shown on queued calls' CallInfo.waiting.
    waiting: dict[str, str] = field(default_factory=dict)

    @cached_property
    def web_channels(self) -> WebChannels:
        """Warm web containers' channels to this process (web_channel.py). A container whose
        channel is full is handed no calls; when it frees a slot, its exchange looks again."""
        channels = WebChannels(self.web_relay)
        self.dispatcher.saturated = channels.saturated
        channels.on_free = lambda container_id: self.wakeups.notify_many(
            [f"container:{container_id}"]
        )
        return channels

    @cached_property
    def registrations(self) -> asyncio.Semaphore:
        """Hosts' registrations in progress at once (api/hosts.py register); made on the
        event loop at first use."""
        return asyncio.Semaphore(_REGISTERING_AT_ONCE)

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

    def share_observations(self) -> None:
        """Take in other replicas' arrivals and execution times (the autoscaler's inputs,
        observed wherever calls are submitted and outputs recorded), and the leader's
        reasons why work waits."""

        def arrived(value: str) -> None:
            function_id, _, n = value.rpartition(":")
            if n.isdigit() and function_id:
                self._arrived(function_id, int(n), self.clock.now_ms())

        def executed(value: str) -> None:
            parts = value.rsplit(":", 2)
            if len(parts) == 3 and parts[2].isdigit():
                with contextlib.suppress(ValueError):
                    mean = float(parts[1])
                    self._executed(parts[0], [mean] * min(int(parts[2]), 1_000))

        def waiting(value: str) -> None:
            function_id, _, why = value.partition("\t")
            if why:
                self.waiting = {**self.waiting, function_id: why}
            elif function_id in self.waiting:
                self.waiting = {k: v for k, v in self.waiting.items() if k != function_id}

        self.wakeups.on_remote(_WAITING, waiting)
        self.wakeups.on_remote(_ARRIVALS, arrived)
        self.wakeups.on_remote(_EXEC, executed)

    @cached_property
    def secret_box(self) -> SecretBox:
        """The keyring that seals secrets at rest (server.secretbox)."""
        return load_secret_box(self.settings)

    @cached_property
    def market(self) -> LiveMarket:
        return LiveMarket(self.settings)

    @cached_property
    def submit_limit(self) -> RateLimiter:
        """Per-token limit of submit requests (calls, job runs, web endpoint requests)."""
        s = self.settings
        return RateLimiter(
            "submit requests", s.submit_rate_per_s, s.submit_burst, "CRUCIBLE_SUBMIT_RATE_PER_S"
        )

    @cached_property
    def quote_limit(self) -> RateLimiter:
        """Per-token limit of market quotes."""
        s = self.settings
        return RateLimiter("quotes", s.quote_rate_per_s, s.quote_burst, "CRUCIBLE_QUOTE_RATE_PER_S")

    def limit(self, limiter: RateLimiter, principal: Principal) -> None:
        """Count one request of the principal's token against ``limiter`` (429 past it)."""
        key = principal.token_id or f"{principal.scope}:{principal.account_id}"
        limiter.take(key, self.clock.now_ms())


def load_or_create_secret(settings: Settings) -> str:
    if settings.secret:
        return settings.secret
    path: Path = settings.home_path / "secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.write_text(value)
    path.chmod(0o600)
    return value
