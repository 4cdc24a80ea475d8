"""The scheduler leader's published view: why work waits, and who may not submit.

Written only by the scheduler loop of the elected leader (scheduler/loop.py), each map
replaced whole by one assignment, so a reader sees the old or the new one, never a mix.
Read by request handlers on every replica: queued calls', pods' and clusters' waiting
reasons, and call submission's credit refusal.

Across replicas: ``waiting`` is shared over the wake-up bus as it changes
(:meth:`LeaderView.share` takes in the leader's changes), so a follower's copy lags by a
wake-up's delay. ``credit_blocked`` is the leader's own: empty elsewhere, where submission
checks the ledger itself (server/request_caches.py ``CreditChecks``). Both are emptied when
this process stops leading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crucible.server.wakeups import Wakeups

__all__ = ["LeaderView"]

# The wake-up key of the leader's reasons why work waits (scheduler/loop.py WAITING_PREFIX).
_WAITING = "waiting="


@dataclass
class LeaderView:
    # Why a function's queued calls are not placed, as of the last scheduler tick (function
    # id -> reason; replaced whole each tick). Shown on queued calls' CallInfo.waiting.
    waiting: dict[str, str] = field(default_factory=dict)
    # Accounts refused new work (no credit, or past their daily cap) -> why; kept by the
    # scheduler when credits are required, read by call submission.
    credit_blocked: dict[str, str] = field(default_factory=dict)

    def share(self, wakeups: Wakeups) -> None:
        """Take in the leader's reasons why work waits, when the leader is another
        replica."""

        def waiting(value: str) -> None:
            function_id, _, why = value.partition("\t")
            if why:
                self.waiting = {**self.waiting, function_id: why}
            elif function_id in self.waiting:
                self.waiting = {k: v for k, v in self.waiting.items() if k != function_id}

        wakeups.on_remote(_WAITING, waiting)
