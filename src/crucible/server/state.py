"""What every request handler and background loop of one server process shares.

``ServerState`` holds the process's settings, store engine (and ``read_engine``, the same
pool behind a write check), blob store, secret and clock, and composes parts, each with one
owner, defined in the module of the concern it serves and saying there who writes it, who
reads it and how stale it may be on other replicas (docs/operators.md, "Running replicas").
With replicas (several processes on one PostgreSQL store) every part is one process's; the
store is the truth.

- request side, any replica, correct: ``auth`` (server/auth.py), ``containers`` and
  ``calls`` (server/request_caches.py), ``hosts`` (server/host_intake.py);
- request side, bounded-stale by a TTL: ``auth.token_cache`` (5 s), ``credit``
  (server/request_caches.py, 2 s), ``web.endpoints`` (server/web_path.py, 1 s);
- shared over the wake-up bus: ``calls.items_consumed``, and ``observations``
  (server/observations.py: the autoscaler's inputs, observed where calls are submitted and
  outputs recorded);
- the scheduler leader's: ``leader`` (server/scheduler/view.py: why work waits, shared as it
  changes; accounts refused credit, empty elsewhere), ``observations.start_stats``, and the
  market's decisions (``market``: a follower's copy is re-read from the store when stale,
  for quotes and the book);
- this process only, by nature: ``wakeups``, ``dispatcher`` (hand-off to workers parked
  here), ``access`` (sessions whose client is connected here), ``web`` (requests relayed in
  memory, channels), ``metrics``, ``limits`` (server/ratelimit.py), ``containers.log_counts``.

A test (tests/server/test_state_parts.py) keeps it that way: a new field is a part.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine

from crucible.server.auth import AuthCache
from crucible.server.blobs import BlobStore
from crucible.server.dispatch import Dispatcher
from crucible.server.host_intake import HostIntake
from crucible.server.metrics import Metrics
from crucible.server.observations import Observations
from crucible.server.ratelimit import Limits
from crucible.server.relay import AccessRelay
from crucible.server.request_caches import CallCaches, ContainerCaches, CreditChecks
from crucible.server.scheduler.view import LeaderView
from crucible.server.secretbox import SecretBox, load_secret_box
from crucible.server.services.market import LiveMarket
from crucible.server.store.db import read_only
from crucible.server.wakeups import Wakeups
from crucible.server.web_path import WebPath
from crucible.settings import Settings

__all__ = ["Clock", "ServerState", "SystemClock", "load_or_create_secret"]


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
    dispatcher: Dispatcher = field(default_factory=Dispatcher)
    metrics: Metrics = field(default_factory=Metrics)
    auth: AuthCache = field(default_factory=AuthCache)
    containers: ContainerCaches = field(default_factory=ContainerCaches)
    calls: CallCaches = field(default_factory=CallCaches)
    credit: CreditChecks = field(default_factory=CreditChecks)
    hosts: HostIntake = field(default_factory=HostIntake)
    leader: LeaderView = field(default_factory=LeaderView)
    # Parts made from the ones above (they share this process's wake-ups and clock).
    observations: Observations = field(init=False)
    web: WebPath = field(init=False)
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.observations = Observations(self.wakeups, self.metrics, self._now_ms)
        self.web = WebPath(self.dispatcher, self.wakeups)
        self.limits = Limits(self.settings, self._now_ms)

    def _now_ms(self) -> int:
        # The clock as it is at each use: tests replace ``clock`` after the state is made.
        return self.clock.now_ms()

    @cached_property
    def secret_box(self) -> SecretBox:
        """The keyring that seals secrets at rest (server.secretbox)."""
        return load_secret_box(self.settings)

    @cached_property
    def read_engine(self) -> Engine:
        """``engine``'s pool, for work that may only read (store/db.read_only)."""
        return read_only(self.engine)

    @cached_property
    def market(self) -> LiveMarket:
        return LiveMarket(self.settings)


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
