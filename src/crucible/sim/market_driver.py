"""Drives the market core (:class:`~crucible.server.market.Market`) with the simulator's
demand, as the server would: ``advance`` then ``lease`` at each request, ``release`` when
work is done, and the preemptions the market decides carried out.

- A job asks for ``nodes`` leases of ``gpus`` GPUs, in its tier, for its models in fallback
  order, preferring the cheapest or the greenest offer (the policy).
- Refused: it waits, in arrival order with the other waiting jobs that accept the same
  models, and asks again when a lease of one of its models ends (up to ``wake`` waiting jobs
  ask per ended lease, the first refused one stopping its queue), until its patience runs
  out (then it gives up). Refusals are counted by the market's refusal code.
- Preempted (one of its leases outbid or taken by on-demand): the job's other leases are let
  go, its work done so far is kept (it checkpoints in the grace period), and it asks again
  for the rest once the grace period is over, with its patience starting afresh.
- Money: every ended lease is metered with the market's own ``lease_intervals`` (the ledger's
  intervals), the platform keeps ``platform_fee`` of it and the host the rest.
- Carbon: GPU-hours x the model's power x the host's carbon intensity (hosts that declare
  none count at the scenario's default).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any

from crucible.server.market import (
    EndReason,
    Lease,
    LeaseGranted,
    LeaseRequest,
    Market,
    Prefer,
    Tier,
    lease_intervals,
)
from crucible.sim.events import Arrive, EventQueue, Finish
from crucible.sim.fleet import Host
from crucible.sim.metrics import Recorder
from crucible.sim.workload import MS_PER_HOUR, Job

__all__ = ["MarketDriver"]

DEFAULT_POWER_W = 400  # a GPU's draw when the scenario gives none for its model


class MarketDriver:
    def __init__(
        self,
        market: Market,
        hosts: dict[str, Host],
        rec: Recorder,
        q: EventQueue,
        *,
        prefer: Prefer,
        platform_fee: float,
        default_carbon: int,
        power_watts: dict[str, int],
        patience_ms: dict[str, int],
        wake: int = 2,
    ) -> None:
        self.m, self.hosts, self.rec, self.q = market, hosts, rec, q
        self.prefer, self.fee = prefer, platform_fee
        self.default_carbon, self.power = default_carbon, power_watts
        self.patience, self.wake = patience_ms, wake
        self.parked: dict[tuple[str, ...], deque[Job]] = {}
        self.keys_by_model: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        self.owner: dict[str, Job] = {}  # running lease id -> job
        self.leases: dict[int, list[str]] = {}  # job id -> its running lease ids
        self.counts: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.cost: Counter[str] = Counter()  # by tier, micro-dollars
        self.gpu_ms: Counter[str] = Counter()  # by tier
        self.revenue: Counter[str] = Counter()  # by provider
        self.fees = 0
        self.carbon_g = 0.0
        self.prices: dict[str, list[int]] = defaultdict(list)  # by tier, per GPU granted
        self.waiting = 0

    # ------------------------------------------------------------------ requests

    def arrive(self, job: Job, now: int) -> None:
        if job.attempts == 0 and job.started_ms is None:
            self.counts["arrived"] += 1
        self._ask(job, now)

    def _park(self, job: Job, now: int, front: bool = False) -> None:
        if job.deadline_ms <= now:
            self.counts["gave_up"] += 1
            return
        q = self.parked.get(job.models)
        if q is None:
            q = self.parked[job.models] = deque()
            for m in job.models:
                self.keys_by_model[m].append(job.models)
        if front:
            q.appendleft(job)
        else:
            q.append(job)
        self.waiting += 1

    def _wake(self, model: str, now: int) -> None:
        """Capacity of ``model`` was freed: let waiting jobs that accept it ask again."""
        tries = 0
        for key in self.keys_by_model.get(model, ()):
            q = self.parked[key]
            while q and tries < self.wake:
                job = q.popleft()
                self.waiting -= 1
                if job.deadline_ms <= now:
                    self.counts["gave_up"] += 1
                    continue
                tries += 1
                if not self._ask(job, now, park=False):
                    self._park(job, now, front=True)
                    break

    def expire(self, now: int) -> None:
        """Waiting jobs past their patience give up (called at each sample)."""
        for key, q in self.parked.items():
            if any(j.deadline_ms <= now for j in q):
                left = deque(j for j in q if j.deadline_ms > now)
                self.counts["gave_up"] += len(q) - len(left)
                self.waiting -= len(q) - len(left)
                self.parked[key] = left

    def _ask(self, job: Job, now: int, park: bool = True) -> bool:
        """Ask the market for the job's leases; ``False`` if refused (then parked if
        ``park``)."""
        self.m.advance(now)
        job.attempts += 1
        tier = Tier.INTERRUPTIBLE if job.tier == "interruptible" else Tier.ON_DEMAND
        req = LeaseRequest(
            account=f"renter-{job.cls}",
            models=job.models,
            count=job.gpus,
            nodes=job.nodes,
            tier=tier,
            bid=job.bid_micros if tier is Tier.INTERRUPTIBLE else None,
            prefer=self.prefer,
            lease_id=f"j{job.id}-{job.attempts}",
        )
        d = self.m.lease(req, now)
        if not isinstance(d, LeaseGranted):
            self.refusals[d.code.value] += 1
            if park:
                self._park(job, now)
            return False
        ended = {p.lease.lease_id: p.lease for p in d.preemptions}
        for p in d.preemptions:
            victim = self.owner.get(p.lease.lease_id)
            if victim is not None:  # its gang siblings may have been handled already
                self._preempted(victim, ended, p.deadline_ms, now)
        ids = []
        for lease in d.leases:
            self.owner[lease.lease_id] = job
            ids.append(lease.lease_id)
            self.rec.cleared(job.tier, lease.price_micros_per_device_hour, lease.count)
            self.prices[job.tier].append(lease.price_micros_per_device_hour)
        self.leases[job.id] = ids
        gpus = sum(x.count for x in d.leases)
        self.rec.add_busy(now, gpus)
        if job.started_ms is None:
            self.counts["started"] += 1
            self.rec.started(now, job.arrival_ms)
        else:
            self.counts["restarted"] += 1
        job.started_ms = now
        start = max(x.start_ms for x in d.leases)
        self.q.push(start + job.remaining_ms, Finish(job, job.epoch))
        return True

    # ------------------------------------------------------------------ ends

    def finish(self, job: Job, now: int) -> None:
        models = self._end_all(job, now, {})
        job.remaining_ms = 0
        self.counts["finished"] += 1
        for m in sorted(models):
            self._wake(m, now)

    def _end_all(self, job: Job, now: int, already: dict[str, Lease]) -> set[str]:
        """End the job's leases (those in ``already`` the market has ended: preempted);
        returns the device types freed."""
        freed: set[str] = set()
        for lease_id in self.leases.pop(job.id, []):
            self.owner.pop(lease_id, None)
            ended = already.get(lease_id) or self.m.release(lease_id, now, EndReason.RELEASED)
            self._account(ended)
            self.rec.add_busy(now, -ended.count)
            freed.add(ended.device_type)
        return freed

    def _preempted(self, job: Job, ended: dict[str, Lease], deadline_ms: int, now: int) -> None:
        self.counts["preemptions"] += 1
        first = min(self.leases[job.id])
        begun = self.m.get_lease(first).start_ms if first not in ended else ended[first].start_ms
        self._end_all(job, now, ended)
        # the work done (up to the notice) is kept: the job checkpoints in the grace period
        done = max(0, now - begun)
        job.remaining_ms = max(1, job.remaining_ms - done)
        job.epoch += 1
        job.deadline_ms = deadline_ms + self.patience.get(job.cls, MS_PER_HOUR)
        self.q.push(deadline_ms, Arrive(job))

    def _account(self, lease: Lease) -> None:
        assert lease.end_ms is not None
        span = lease.end_ms - lease.start_ms
        if span <= 0:
            return
        cost = sum(iv.cost_micros for iv in lease_intervals(lease, None, lease.end_ms, 2**62))
        fee = int(cost * self.fee)
        host = self.hosts[lease.host_id]
        tier = lease.tier.value
        self.cost[tier] += cost
        self.gpu_ms[tier] += span * lease.count
        self.fees += fee
        self.revenue[host.provider] += cost - fee
        carbon = self.default_carbon if host.carbon_g_per_kwh is None else host.carbon_g_per_kwh
        kw = self.power.get(lease.device_type, DEFAULT_POWER_W) / 1000
        self.carbon_g += span * lease.count / MS_PER_HOUR * kw * carbon

    def close(self, now: int) -> None:
        """End the run: leases still running are metered up to ``now`` (not released)."""
        for lease in self.m.running_leases():
            self._account(lease.ended(now, EndReason.RELEASED))

    # ------------------------------------------------------------------ report

    def summary(self) -> dict[str, Any]:
        gpu_h = {t: ms / MS_PER_HOUR for t, ms in self.gpu_ms.items()}
        all_h = sum(gpu_h.values())
        prices = {}
        for tier, ps in sorted(self.prices.items()):
            s = sorted(ps)
            prices[tier] = {
                "grants": len(s),
                "mean_usd": round(sum(s) / len(s) / 1e6, 4),
                "p50_usd": round(s[len(s) // 2] / 1e6, 4),
                "min_usd": round(s[0] / 1e6, 4),
                "max_usd": round(s[-1] / 1e6, 4),
            }
        return {
            "jobs": {
                k: self.counts[k]
                for k in ("arrived", "started", "restarted", "finished", "gave_up", "preemptions")
            },
            "refusals": dict(sorted(self.refusals.items())),
            "clearing_prices_per_gpu_hour": prices,
            "renters": {
                tier: {
                    "cost_usd": round(self.cost[tier] / 1e6, 2),
                    "gpu_hours": round(gpu_h.get(tier, 0.0), 1),
                    "usd_per_gpu_hour": round(self.cost[tier] / 1e6 / gpu_h[tier], 4)
                    if gpu_h.get(tier)
                    else None,
                }
                for tier in sorted(self.cost)
            },
            "hosts_revenue_usd": {p: round(v / 1e6, 2) for p, v in sorted(self.revenue.items())},
            "platform_fees_usd": round(self.fees / 1e6, 2),
            "carbon_g_per_gpu_hour": round(self.carbon_g / all_h, 1) if all_h else None,
            "gpu_hours": round(all_h, 1),
        }
