"""Drives the market core (:class:`~crucible.core.market.Market`) with the simulator's
demand, as the server does: ``advance``, then at each request the server's own lease path
(:func:`crucible.core.leasing.lease_on_hosts`, which the scheduler's market placer and
cluster placement call), ``release`` when work is done, and the preemptions the market
decides carried out.

- A job asks for ``nodes`` leases of ``gpus`` GPUs, in its tier, for its models in fallback
  order, preferring the cheapest or the greenest offer (the policy).
- Refused: it waits, in arrival order with the other waiting jobs that accept the same
  models. When a lease ends, waiting jobs that the freed host could serve from its free
  devices at its prices ask again (at most ``wake`` asks per ended lease, looking at most
  ``wake`` jobs deep; a job the host cannot serve goes to the back of its queue), until
  their patience runs out (then they give up). Refusals are counted by the market's code.
- Impossible: a job that no host could ever serve (its models absent, more GPUs per lease
  than any host of them has, or more leases than such hosts) is reported with its reason
  when it arrives (:mod:`crucible.sim.feasibility`), never asked for and never queued.
- Not asking in vain: a job does not ask (and waits as if refused) while the market could
  not possibly grant it: for each of its models, no host has a node's worth of devices
  free, and either no running interruptible lease of the model bids strictly less than the
  most the job could pay (its bid, or the highest minimum or ask of the model's hosts) or
  no host has a node's worth of devices that are free or under interruptible leases. Under
  the market's rules every grant needs free devices or the preemption of strictly lower
  bids on one host, so skipping changes no decision; it keeps a full 100,000-GPU market
  from spending its time on refusals. The sim knows these counts because every
  lease in the market is one of its own.
- Preempted (one of its leases outbid or taken by on-demand): the job's other leases are let
  go, its work done so far is kept (it checkpoints in the grace period), and it asks again
  for the rest once the grace period is over, with its patience starting afresh.
- Money: every ended lease is metered with the market's own ``lease_intervals`` (the ledger's
  intervals), the platform keeps ``platform_fee`` of it and the host the rest.
- Carbon: GPU-hours x the model's power x the host's carbon intensity (hosts that declare
  none count at the scenario's default).
- The renters' view per tier: the price paid against the on-demand list price of the same
  model (``list_prices``: the catalog's reference price, else the model's highest ask in
  the fleet), hosts' income per GPU-hour against their on-demand ask, jobs that gave up
  (by their last refusal), preemptions per GPU-hour, the share of work that finished, and
  energy (kWh) and emissions per GPU-hour.
- Policy: renters prefer the cheapest or the greenest offer, per tier (``prefer`` for
  on-demand, ``prefer_interruptible`` for interruptible bids), optionally with a price cap
  (``price_cap``: max_price = that fraction of the mean ask of the job's first model), or
  with interruptible work paying each host's minimum, its reserve price (``pay_reserve``:
  the market's bid=None with max_price = the job's bid: it takes only hosts whose minimum
  it would have paid, and never outbids another interruptible lease), or with interruptible
  work held to hosts at or below a carbon intensity (``interruptible_max_carbon``, the
  market's max_carbon_g_per_kwh: it waits for green capacity).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from typing import Any

from crucible.core.leasing import NotLeased, lease_on_hosts
from crucible.core.market import (
    EndReason,
    Lease,
    LeaseRequest,
    Market,
    Prefer,
    Tier,
    lease_intervals,
)
from crucible.core.placement import FULL, NodeSpec, Request
from crucible.sim.events import Arrive, EventQueue, Finish
from crucible.sim.feasibility import Feasibility, ImpossibleLog
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
        prefer_interruptible: Prefer | None = None,
        list_prices: dict[str, int] | None = None,
        ref_prices: dict[str, int] | None = None,
        price_cap: float | None = None,
        pay_reserve: bool = False,
        interruptible_max_carbon: int | None = None,
    ) -> None:
        self.m, self.hosts, self.rec, self.q = market, hosts, rec, q
        self.prefer, self.fee = prefer, platform_fee
        self.prefer_int = prefer if prefer_interruptible is None else prefer_interruptible
        self.list_prices = dict(list_prices or {})
        self.ref_prices = dict(ref_prices or {})
        self.price_cap = price_cap
        self.pay_reserve = pay_reserve
        self.int_max_carbon = interruptible_max_carbon
        self.tiers = _TierStats()
        self.default_carbon, self.power = default_carbon, power_watts
        self.patience, self.wake = patience_ms, wake
        self.parked: dict[tuple[str, ...], deque[Job]] = {}
        self.total: Counter[str] = Counter()
        self.max_ask: dict[str, int] = {}
        self.max_min: dict[str, int] = {}
        self.min_min: dict[str, int] = {}
        for h in hosts.values():
            if h.gpus:
                self.total[h.model] += h.gpus
                self.max_ask[h.model] = max(self.max_ask.get(h.model, 0), h.price_micros)
                self.max_min[h.model] = max(
                    self.max_min.get(h.model, 0), h.interruptible_min_micros
                )
                self.min_min[h.model] = min(
                    self.min_min.get(h.model, h.interruptible_min_micros),
                    h.interruptible_min_micros,
                )
        self.leased: Counter[str] = Counter()
        # hosts of each model by their free GPUs: free_hosts[m][f] = hosts with f free
        # and by their GPUs not under on-demand leases (free or interruptible)
        self.host_free: dict[str, int] = {h.id: h.gpus for h in hosts.values() if h.gpus}
        self.host_soft: dict[str, int] = dict(self.host_free)
        self.free_hosts: dict[str, Counter[int]] = defaultdict(Counter)
        self.soft_hosts: dict[str, Counter[int]] = defaultdict(Counter)
        for h in hosts.values():
            if h.gpus:
                self.free_hosts[h.model][h.gpus] += 1
                self.soft_hosts[h.model][h.gpus] += 1
        self.bids: dict[str, Counter[int]] = defaultdict(Counter)  # running interruptible
        self.bid_heap: dict[str, list[int]] = defaultdict(list)
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
        # jobs no host could ever serve: whole GPUs of their models, one host per lease
        self.feasibility = Feasibility(
            [NodeSpec(h.id, 0, 0, h.gpus, h.model) for h in hosts.values() if h.gpus]
        )
        self.impossible = ImpossibleLog()

    # ------------------------------------------------------------------ requests

    def arrive(self, job: Job, now: int) -> None:
        if job.attempts == 0 and job.started_ms is None:
            self.counts["arrived"] += 1
            why = self.feasibility.reason(
                Request(0, 0, job.gpus, FULL, frozenset(job.models)), job.nodes
            )
            if why is not None:  # never asked, never queued: reported with its reason
                self.counts["impossible"] += 1
                self.impossible.add(
                    why,
                    {
                        "task": str(job.id),
                        "class": job.cls,
                        "arrival_s": job.arrival_ms / 1000,
                        "nodes": job.nodes,
                        "gpus": job.gpus,
                        "models": list(job.models),
                    },
                )
                return
            self.tiers.jobs[job.tier]["arrived"] += 1
        self._ask(job, now)

    def _gave_up(self, job: Job, n: int = 1) -> None:
        if job.started_ms is None:  # a censored wait: it never started
            self.rec.gave_up(job.deadline_ms, job.arrival_ms)
        self.counts["gave_up"] += n
        self.tiers.jobs[job.tier]["gave_up"] += n
        reason = self.tiers.last_refusal.pop(job.id, "never_granted")
        self.tiers.gave_up_by[f"{job.tier}: {reason}"] += n

    def _held(self, lease: Lease, sign: int) -> None:
        """Track a lease starting (``sign=1``) or ending (``-1``) for :meth:`_hopeless`."""
        m = lease.device_type
        self.leased[m] += sign * lease.count
        self._move(self.host_free, self.free_hosts[m], lease.host_id, -sign * lease.count)
        if lease.tier is not Tier.INTERRUPTIBLE:
            self._move(self.host_soft, self.soft_hosts[m], lease.host_id, -sign * lease.count)
        if lease.tier is Tier.INTERRUPTIBLE:
            price = lease.price_micros_per_device_hour
            self.bids[m][price] += sign
            if sign > 0:
                heapq.heappush(self.bid_heap[m], price)

    @staticmethod
    def _move(per_host: dict[str, int], by_level: Counter[int], host: str, delta: int) -> None:
        before = per_host[host]
        per_host[host] = before + delta
        by_level[before] -= 1
        by_level[before + delta] += 1

    def _min_bid(self, model: str) -> int | None:
        heap, live = self.bid_heap[model], self.bids[model]
        while heap and live[heap[0]] <= 0:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _hopeless(self, job: Job) -> bool:
        """True when no grant is possible now (see the module docstring)."""
        interruptible = job.tier == "interruptible"
        for m in job.models:
            if m not in self.total:
                continue
            if interruptible and job.bid_micros is not None and job.bid_micros < self.min_min[m]:
                continue  # below every host's minimum for this model
            if any(n > 0 for f, n in self.free_hosts[m].items() if f >= job.gpus):
                return False  # some host has a node's worth free
            if not any(n > 0 for f, n in self.soft_hosts[m].items() if f >= job.gpus):
                continue  # on every host, on-demand leases hold too much
            if interruptible:
                bound = job.bid_micros if job.bid_micros is not None else self.max_min[m]
            else:
                bound = self.max_ask[m]
            low = self._min_bid(m)
            if low is not None and low < bound:
                return False
        return True

    def _park(self, job: Job, now: int, front: bool = False) -> None:
        if job.deadline_ms <= now:
            self._gave_up(job)
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

    def _fits_host(self, job: Job, host_id: str) -> bool:
        """Could ``host_id`` serve one node of ``job`` from its free devices at its prices?"""
        h = self.hosts[host_id]
        if self.host_free[host_id] < job.gpus:
            return False
        return job.tier != "interruptible" or (
            job.bid_micros is None or job.bid_micros >= h.interruptible_min_micros
        )

    def _wake(self, host_id: str, now: int) -> None:
        """Devices on ``host_id`` were freed: waiting jobs that accept its model and that it
        could serve from its free devices ask again (at most ``wake`` asks; the head of each
        queue first, looking at most ``wake`` jobs deep)."""
        tries = 0
        model = self.hosts[host_id].model
        for key in self.keys_by_model.get(model, ()):
            q = self.parked[key]
            looked = 0
            while q and looked < self.wake and tries < self.wake:
                job = q[0]
                if job.deadline_ms > now and not self._fits_host(job, host_id):
                    if len(q) > 1 and looked + 1 < self.wake:
                        q.rotate(-1)  # look at the next one; the skipped goes to the back
                    looked += 1
                    continue
                looked += 1
                q.popleft()
                self.waiting -= 1
                if job.deadline_ms <= now:
                    self._gave_up(job)
                    continue
                tries += 1
                if not self._ask(job, now, park=False):
                    self._park(job, now, front=True)
                    break

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting: every sample until the next event is alike."""
        return not self.waiting and not self.leases

    def expire(self, now: int) -> None:
        """Waiting jobs past their patience give up (called at each sample)."""
        for key, q in self.parked.items():
            if any(j.deadline_ms <= now for j in q):
                left = deque(j for j in q if j.deadline_ms > now)
                for j in q:
                    if j.deadline_ms <= now:
                        self._gave_up(j)
                self.waiting -= len(q) - len(left)
                self.parked[key] = left

    def _ask(self, job: Job, now: int, park: bool = True) -> bool:
        """Ask the market for the job's leases; ``False`` if refused (then parked if
        ``park``)."""
        if self._hopeless(job):
            self.counts["asks_skipped"] += 1
            self.tiers.last_refusal[job.id] = "no_capacity (not asked)"
            if park:
                self._park(job, now)
            return False
        self.m.advance(now)
        job.attempts += 1
        tier = Tier.INTERRUPTIBLE if job.tier == "interruptible" else Tier.ON_DEMAND
        req = LeaseRequest(
            account=f"renter-{job.cls}",
            models=job.models,
            count=job.gpus,
            nodes=job.nodes,
            tier=tier,
            bid=job.bid_micros if tier is Tier.INTERRUPTIBLE and not self.pay_reserve else None,
            max_price=self._cap(job, tier),
            prefer=self.prefer_int if tier is Tier.INTERRUPTIBLE else self.prefer,
            max_carbon_g_per_kwh=self.int_max_carbon if tier is Tier.INTERRUPTIBLE else None,
            lease_id=f"j{job.id}-{job.attempts}",
        )
        # The lease path the server's scheduler runs (core/leasing.py); the simulated jobs
        # hold only GPUs, so no host is short of CPU or memory for them.
        d = lease_on_hosts(self.m, req, now)
        if isinstance(d, NotLeased):
            self.refusals[d.code] += 1
            self.tiers.last_refusal[job.id] = d.code
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
            self._held(lease, 1)
            self.owner[lease.lease_id] = job
            ids.append(lease.lease_id)
            self.rec.cleared(job.tier, lease.price_micros_per_device_hour, lease.count)
            self.prices[job.tier].append(lease.price_micros_per_device_hour)
            listed = self.list_prices.get(lease.device_type)
            if listed:
                self.tiers.ratios[job.tier].append(lease.price_micros_per_device_hour / listed)
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
        hosts = self._end_all(job, now, {})
        job.remaining_ms = 0
        self.counts["finished"] += 1
        self.tiers.jobs[job.tier]["finished"] += 1
        self.tiers.last_refusal.pop(job.id, None)
        for h in sorted(hosts):
            self._wake(h, now)

    def _end_all(self, job: Job, now: int, already: dict[str, Lease]) -> set[str]:
        """End the job's leases (those in ``already`` the market has ended: preempted);
        returns the hosts whose devices were freed."""
        freed: set[str] = set()
        for lease_id in self.leases.pop(job.id, []):
            self.owner.pop(lease_id, None)
            ended = already.get(lease_id) or self.m.release(lease_id, now, EndReason.RELEASED)
            self._account(ended)
            self._held(ended, -1)
            self.rec.add_busy(now, -ended.count)
            freed.add(ended.host_id)
        return freed

    def _preempted(self, job: Job, ended: dict[str, Lease], deadline_ms: int, now: int) -> None:
        self.counts["preemptions"] += 1
        self.tiers.jobs[job.tier]["preemptions"] += 1
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
        gpu_h = span * lease.count / MS_PER_HOUR
        self.carbon_g += gpu_h * kw * carbon
        t = self.tiers
        t.list_cost[tier] += gpu_h * self.list_prices.get(lease.device_type, 0)
        t.ask_cost[tier] += gpu_h * host.price_micros
        t.income[tier] += cost - fee
        t.kwh[tier] += gpu_h * kw
        t.carbon_g[tier] += gpu_h * kw * carbon

    def _cap(self, job: Job, tier: Tier) -> int | None:
        """The policy's price cap for ``job`` (None: none). Paying the reserve price, an
        interruptible job still pays at most its bid."""
        if self.pay_reserve and tier is Tier.INTERRUPTIBLE:
            return job.bid_micros
        if self.price_cap is None or not job.models:
            return None
        ref = self.ref_prices.get(job.models[0])
        if ref is None:
            return None
        cap = round(ref * self.price_cap)
        if tier is Tier.INTERRUPTIBLE and job.bid_micros is not None:
            cap = max(cap, job.bid_micros)
        return cap

    def close(self, now: int) -> None:
        """End the run: leases still running are metered up to ``now`` (not released); jobs
        still waiting that never started count their waits until ``now`` (censored)."""
        for lease in self.m.running_leases():
            self._account(lease.ended(now, EndReason.RELEASED))
        for q in self.parked.values():
            for job in q:
                if job.started_ms is None:
                    self.rec.still_waiting(min(now, job.deadline_ms), job.arrival_ms)

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
                for k in (
                    "arrived",
                    "started",
                    "restarted",
                    "finished",
                    "gave_up",
                    "impossible",
                    "preemptions",
                    "asks_skipped",
                )
            },
            "impossible": self.impossible.summary(),
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
            "tiers": self.tiers.summary(gpu_h, self.cost),
            "gave_up_by_reason": dict(sorted(self.tiers.gave_up_by.items())),
        }


class _TierStats:
    """Per-tier figures for the market report (see the module docstring)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Counter[str]] = defaultdict(Counter)
        self.ratios: dict[str, list[float]] = defaultdict(list)  # price / list, per grant
        self.list_cost: dict[str, float] = defaultdict(float)  # micro-dollars at list price
        self.ask_cost: dict[str, float] = defaultdict(float)  # at the hosts' on-demand asks
        self.income: Counter[str] = Counter()  # hosts' share, micro-dollars
        self.kwh: dict[str, float] = defaultdict(float)
        self.carbon_g: dict[str, float] = defaultdict(float)
        self.last_refusal: dict[int, str] = {}
        self.gave_up_by: Counter[str] = Counter()

    def summary(self, gpu_h: dict[str, float], cost: Counter[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tier in sorted(set(gpu_h) | set(self.jobs)):
            h = gpu_h.get(tier, 0.0)
            jobs = self.jobs[tier]
            r = sorted(self.ratios.get(tier, []))
            listed = self.list_cost[tier]
            out[tier] = {
                "gpu_hours": round(h, 1),
                "paid_vs_list": {
                    # cost-weighted: what renters paid over what list prices would have cost
                    "mean": round(cost[tier] / listed, 4) if listed else None,
                    "p10": _q(r, 0.1),
                    "p50": _q(r, 0.5),
                    "p90": _q(r, 0.9),
                    "grants": len(r),
                },
                "usd_per_gpu_hour": round(cost[tier] / 1e6 / h, 4) if h else None,
                "list_usd_per_gpu_hour": round(listed / 1e6 / h, 4) if h else None,
                "host_income_usd_per_gpu_hour": round(self.income[tier] / 1e6 / h, 4)
                if h
                else None,
                "host_ask_usd_per_gpu_hour": round(self.ask_cost[tier] / 1e6 / h, 4) if h else None,
                "jobs": {k: jobs[k] for k in ("arrived", "finished", "gave_up", "preemptions")},
                "finished_share": round(jobs["finished"] / jobs["arrived"], 4)
                if jobs["arrived"]
                else None,
                "preemptions_per_gpu_hour": round(jobs["preemptions"] / h, 6) if h else None,
                "kwh_per_gpu_hour": round(self.kwh[tier] / h, 4) if h else None,
                "carbon_g_per_gpu_hour": round(self.carbon_g[tier] / h, 1) if h else None,
            }
        return out


def _q(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 4)
