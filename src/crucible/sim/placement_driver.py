"""Drives the placement core (:class:`~crucible.core.placement.Cluster`) with
the simulator's jobs: the code that decides is the scheduler's own, called as the server
calls it.

Queueing: a job is placed when it arrives if it fits; otherwise it waits in arrival order.
Each time capacity is released, up to ``backfill`` waiting jobs are tried from the head (a
later job that fits may start before an earlier one that does not, as Kubernetes' scheduler
retries unschedulable pods). A waiting job gives up at its deadline. A gang (``nodes > 1``)
starts all its members at once or none (:meth:`Cluster.place_gang`). A job needing more
nodes than can fit its request (a bound kept from its shape's last refusal and the node
releases since) is refused without asking the cluster: the same decisions, fewer scans.

A job that no node could ever run (:class:`~crucible.sim.feasibility.Feasibility`) is not
queued: it is counted as impossible, with its reason, when it arrives. At each sample the
driver gives the recorder the GPU allocation and FGD's fragmentation of that moment
(:meth:`PlacementDriver.gauges`), so a replay that drains still shows what happened during
the run.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from crucible.core.placement import (
    FULL,
    Cluster,
    Placement,
    Request,
    node_fragmentation,
)
from crucible.sim.events import EventQueue, Finish
from crucible.sim.feasibility import Feasibility, ImpossibleLog
from crucible.sim.metrics import Recorder
from crucible.sim.workload import Job

__all__ = ["GAUGES", "PlacementDriver"]

GAUGES = ("gpu_allocation", "fragmented_gpus", "fragmentation_of_free")
"""The series a placement run samples (see :meth:`PlacementDriver.gauges`)."""


class PlacementDriver:
    def __init__(self, cluster: Cluster, rec: Recorder, q: EventQueue, backfill: int = 64) -> None:
        self.cluster, self.rec, self.q, self.backfill = cluster, rec, q, backfill
        self.waiting: deque[Job] = deque()
        self.running: dict[int, tuple[Placement, ...]] = {}
        self.counts = {
            "arrived": 0,
            "started": 0,
            "finished": 0,
            "gave_up": 0,
            "impossible": 0,
            "gangs_started": 0,
            "attempts_refused": 0,
        }
        self.peak_utilisation = 0.0
        self.capacity_milli = max(1, sum(len(g) for g in cluster.gpu_free) * FULL)
        self.arrived_milli = 0
        self.alloc_at_full: float | None = None
        self.classes: tuple[tuple[Request, float], ...] = ()
        self.feasibility = Feasibility(cluster.nodes)
        self.impossible = ImpossibleLog()
        self._frag_memo: dict[tuple[int, int, tuple[int, ...], str], float] = {}
        self._frag_samples: list[tuple[float, float | None]] = []
        # For each request refused so far: how many nodes fitted it then, and how many node
        # releases had happened. A release changes whether one node fits and a placement
        # only fills nodes, so that count plus the releases since bounds the nodes that fit
        # it now: a job needing more is refused without asking the cluster. Exact (the
        # same decisions), and a queue of large gangs no longer costs a scan of the fleet
        # per waiting gang at every release.
        self._fitted: dict[Request, tuple[int, int]] = {}
        self._releases = 0

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting: every sample until the next event is alike."""
        return not self.waiting and not self.running

    def _gpus(self, job: Job) -> float:
        return job.request.gpu_demand_milli * job.nodes / FULL

    def _try(self, job: Job, now: int) -> bool:
        req = job.request
        got: tuple[Placement, ...] | None = None
        fitting: int | None = None  # nodes that fit ``req`` now, when the cluster was asked
        known = self._fitted.get(req)
        if known is not None and known[0] + self._releases - known[1] < job.nodes:
            pass  # fewer nodes than it needs can fit it: refused again
        elif job.nodes == 1:
            p = self.cluster.place(req)
            got, fitting = (None, 0) if p is None else ((p,), None)
        else:
            fitting = self.cluster.count_fitting(req, job.nodes)
            if fitting >= job.nodes:
                got = self.cluster.place_gang(req, job.nodes)
        if got is None:
            self.counts["attempts_refused"] += 1
            if fitting is not None:
                self._fitted[req] = (fitting, self._releases)
            return False
        self.running[job.id] = got
        job.started_ms = now
        self.counts["started"] += 1
        self.counts["gangs_started"] += job.nodes > 1
        self.rec.started(now, job.arrival_ms)
        self.rec.add_busy(now, self._gpus(job))
        self.peak_utilisation = max(self.peak_utilisation, self.rec.busy / self.rec.capacity_gpus)
        if not job.forever:
            end = job.deadline_ms if job.fixed_end else now + job.remaining_ms
            self.q.push(max(end, now), Finish(job, job.epoch))
        return True

    def arrive(self, job: Job, now: int) -> None:
        self.counts["arrived"] += 1
        why = self.feasibility.reason(job.request, job.nodes)
        if why is not None:  # never demand: it could not take a GPU in any state
            self._impossible(job, why)
            return
        self.arrived_milli += job.request.gpu_demand_milli * job.nodes
        placed = self._try(job, now)
        if self.alloc_at_full is None and self.arrived_milli >= self.capacity_milli:
            # FGD's comparison point: GPUs allocated when the demand that arrived equals the
            # fleet's GPUs, once the arrival that brought it there is placed (or not)
            self.alloc_at_full = self.cluster.gpu_allocated_milli() / self.capacity_milli
        if not placed:
            if job.deadline_ms <= now:
                self._gave_up(job, now)
            else:
                self.waiting.append(job)

    def _impossible(self, job: Job, why: str) -> None:
        self.counts["impossible"] += 1
        r = job.request
        self.impossible.add(
            why,
            {
                "task": job.name or str(job.id),
                "class": job.cls,
                "arrival_s": job.arrival_ms / 1000,
                "nodes": job.nodes,
                "gpus": r.num_gpu,
                "gpu_milli": r.gpu_milli,
                "cpu_milli": r.cpu_milli,
                "memory_mib": r.memory_mib,
                "models": sorted(r.models),
            },
        )

    def _gave_up(self, job: Job, now: int) -> None:
        self.counts["gave_up"] += 1
        self.rec.gave_up(min(now, max(job.deadline_ms, job.arrival_ms)), job.arrival_ms)

    def close(self, end_ms: int) -> None:
        """The run ended: jobs still waiting count their waits until ``end_ms``, or until
        their deadline where it passed since the last check (censored)."""
        for job in self.waiting:
            self.rec.still_waiting(
                min(end_ms, max(job.deadline_ms, job.arrival_ms)), job.arrival_ms
            )

    def finish(self, job: Job, now: int) -> None:
        placements = self.running.pop(job.id)
        for p in placements:
            self.cluster.release(p)
        self._releases += len(placements)
        self.rec.add_busy(now, -self._gpus(job))
        self.counts["finished"] += 1
        self.drain(now)

    def drain(self, now: int) -> None:
        """Drop waiting jobs past their deadline; try up to ``backfill`` of the rest."""
        tried = 0
        kept: list[Job] = []
        while self.waiting and tried < self.backfill:
            job = self.waiting.popleft()
            if job.deadline_ms <= now:
                self._gave_up(job, now)
                continue
            tried += 1
            if not self._try(job, now):
                kept.append(job)
        self.waiting.extendleft(reversed(kept))

    def expire(self, now: int) -> None:
        """Drop every waiting job past its deadline (called at each sample)."""
        if any(j.deadline_ms <= now for j in self.waiting):
            for j in self.waiting:
                if j.deadline_ms <= now:
                    self._gave_up(j, now)
            self.waiting = deque(j for j in self.waiting if j.deadline_ms > now)

    def fragmentation(self) -> tuple[float, float]:
        """FGD's fleet fragmentation now, for ``classes``: (fragmented GPUs, free GPUs)."""
        c = self.cluster
        frag = 0.0
        memo = self._frag_memo  # a node state's fragmentation never changes: keep it
        for i, n in enumerate(c.nodes):
            if not n.gpu_count:
                continue
            key = (c.free_cpu[i], c.free_mem[i], tuple(c.gpu_free[i]), n.gpu_model)
            v = memo.get(key)
            if v is None:
                v = memo[key] = node_fragmentation(*key, self.classes)
            frag += v
        free = sum(sum(g) for g in c.gpu_free)
        return frag / FULL, free / FULL

    def gauges(self) -> dict[str, float | None]:
        """GPU allocation (share of the GPUs) and FGD's fragmentation now (fragmented GPUs,
        and their share of the free GPUs), for the sample series."""
        frag, free = self.fragmentation()
        # With no GPU free there is no share to take: a break in the series, and not a 0 in
        # its mean (a full fleet is not an unfragmented one).
        share = frag / free if free else None
        self._frag_samples.append((frag, share))
        return {
            "gpu_allocation": self.cluster.gpu_allocated_milli() / self.capacity_milli,
            "fragmented_gpus": frag,
            "fragmentation_of_free": share,
        }

    def summary(self) -> dict[str, Any]:
        c = self.cluster
        frag, free = self.fragmentation()
        sampled = self._frag_samples
        shares = [x for _, x in sampled if x is not None]
        return {
            "impossible": self.impossible.summary(),
            **{k: v for k, v in self.counts.items() if k != "impossible"},
            "still_running": len(self.running),
            "still_waiting": len(self.waiting),
            "arrived_gpu_demand_over_capacity": round(self.arrived_milli / self.capacity_milli, 4),
            "gpu_allocation_when_arrived_equals_capacity": None
            if self.alloc_at_full is None
            else round(self.alloc_at_full, 4),
            "peak_gpu_allocation": round(self.peak_utilisation, 4),
            "gpu_allocation_at_end": round(c.gpu_allocated_milli() / self.capacity_milli, 4),
            "fragmented_gpus_at_end": round(frag, 3),
            "fragmentation_of_free_at_end": round(frag / free, 4) if free else None,
            # sampled during the run (every sample window), not only the final state
            "fragmented_gpus_mean": round(sum(f for f, _ in sampled) / len(sampled), 3)
            if sampled
            else None,
            "fragmented_gpus_max": round(max(f for f, _ in sampled), 3) if sampled else None,
            "fragmentation_of_free_mean": round(sum(shares) / len(shares), 4) if shares else None,
        }
