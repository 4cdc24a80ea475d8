"""Request handlers' caches of what the store already holds, so a hot request reads nothing.

Each is this process's own, filled by request handlers on any replica. Each class says who
writes it, who reads it and how stale it may be on other replicas (docs/operators.md,
"Running replicas").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallCaches", "ContainerCaches", "CreditChecks"]


@dataclass
class ContainerCaches:
    """Per container. Written and read by the container routes (api/containers.py) and the
    log route (api/logs.py). ``facts`` never change, so they are never stale (a miss reads
    the store); ``touched_ms`` only limits how often a container's last activity is written;
    ``log_counts`` count lines stored through this process since it started (each replica
    enforces the per-container cap on what reaches it)."""

    # What never changes about a container (account, function, rate, timeout, retries).
    facts: dict[str, Any] = field(default_factory=dict)
    # When each container's last_active_ms was last written (it is written at most 1/s).
    touched_ms: dict[str, int] = field(default_factory=dict)
    # Log lines stored per container since this server started (for the per-container cap).
    log_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class CallCaches:
    """Per call. ``claim_groups`` is written by call submission (api/calls.py) and read
    when the call is handed out and its output recorded (api/containers.py): a miss reads
    the call's row. ``items_consumed`` is written by a generator call's reader (api/items.py)
    and shared over the wake-up bus, so a worker streaming through another replica is held
    back by the real count within a wake-up's delay."""

    # Group of each call handed to a container, so recording its output reads nothing.
    claim_groups: dict[str, str | None] = field(default_factory=dict)
    # Generator calls: how many items each caller has read (the worker's back-pressure).
    items_consumed: dict[str, int] = field(default_factory=dict)
    # WebSocket calls: how far the worker has read the client's inbox (the gateway stops
    # reading from a client that is this far ahead; shared like items_consumed).
    inbox_read: dict[str, int] = field(default_factory=dict)


@dataclass
class CreditChecks:
    """Submission-time credit checks (billing/statements.py ``credit_refusal``), written
    and read by call submission (api/calls.py, api/openai.py), dropped for an account whose
    credit changes here (api/market.py). Stale by at most ``CREDIT_CHECK_TTL_MS`` (2 s) on
    any replica."""

    # account -> (valid until ms, refusal or None).
    checked: dict[str, tuple[int, str | None]] = field(default_factory=dict)
