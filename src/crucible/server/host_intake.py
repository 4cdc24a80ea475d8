"""Hosts' intake in this process: their syncs' sequence numbers, unwritten heartbeats and
registrations in progress.

Written and read by the host routes (api/hosts.py) of whichever replica an agent reaches;
the scheduler leader flushes this process's heartbeats at the start of each tick.
``seq`` is keyed by the agent process's registration, so a host moving to another replica
is correct there; ``heartbeats`` are at most a second behind in the store
(server/heartbeats.py); ``registrations`` only bounds the work in progress here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property

from crucible.server.heartbeats import Heartbeats

__all__ = ["HostIntake"]

# As many as the SQLite engine's pool has connections: more only wait for the store.
_REGISTERING_AT_ONCE = 4


@dataclass
class HostIntake:
    # Newest sync sequence number applied per host (see protocol.hosts.HostSync.seq).
    seq: dict[str, int] = field(default_factory=dict)
    # Hosts' syncs seen here, written to the store in batches (server/heartbeats.py).
    heartbeats: Heartbeats = field(default_factory=Heartbeats)

    @cached_property
    def registrations(self) -> asyncio.Semaphore:
        """Hosts' registrations in progress at once (api/hosts.py register); made on the
        event loop at first use."""
        return asyncio.Semaphore(_REGISTERING_AT_ONCE)
