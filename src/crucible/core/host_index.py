"""The live scheduler's hosts as nodes of the indexed placement engine.

:class:`HostIndex` places the scheduler's containers (CPU-only, and GPU containers when no
market places them) through :class:`~crucible.core.placement.Cluster`, the engine the
simulator drives, so the simulator's placement figures describe the scheduler's own choices.

Model. The scheduler's :class:`~crucible.core.scheduling.HostCapacity` has fractional cores and
may hold GPUs of several models; a :class:`Cluster` node has milli-cores and GPUs of one model.
So the index keeps one *view* (a cluster over every host) per GPU model asked, whose nodes
carry only that model's GPUs, and one view for CPU-only requests, whose nodes carry every GPU
of their host under one stand-in model (a CPU-only request ignores models, and the policy still
sees how many GPUs a host has free: ``best-fit`` sends CPU work to hosts with the fewest free
GPUs, GPU-less ones first, as in the simulator). Views are built on first use; every host is
one node in each, in host id order (the engine breaks ties by node, so ties go to the lower
host id). CPU is converted to milli-cores conservatively: a host's free CPU rounds down and a
request rounds up, so a placement never oversubscribes the host's cores.

Ranking: the placement policy's (``best-fit`` by default: fewest free GPUs of the model left,
then least free CPU), searched through the engine's indexes (at most ``max_candidates``
feasible hosts scored, as in the simulator).

Contracts: :meth:`HostIndex.place` updates the chosen host's ``used_*`` in place and every
view; a host changed outside the index (a GPU lease the market placed on it) must be passed
to :meth:`HostIndex.refresh` before the next placement. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crucible.core.placement import (
    FULL,
    MAX_NODE_CPU_MILLI,
    MEM_LEVELS,
    Cluster,
    NodeSpec,
    PlacementPolicy,
    Request,
    make_policy,
)

if TYPE_CHECKING:
    from crucible.core.scheduling import HostCapacity

__all__ = ["HostIndex"]

# The CPU-only view's model for every GPU of a host (models do not matter to CPU work).
_ANY_MODEL = "*"

# The engine indexes memory up to 2**31 MiB; a host may report up to 2**40 (the wire's bound).
# More than 2 PiB is as good as unlimited for a container, so a host's memory is capped here
# rather than letting one odd inventory fail every scheduler tick; its cores likewise (the
# wire refuses more than the engine holds, but a host registered before that bound was
# tightened may still be in the store).
_MAX_MEMORY_MIB = 2 ** (MEM_LEVELS - 1) - 1

# Slack for float sums of cores (e.g. 0.1 + 0.2): a request of exactly the free CPU fits.
_CPU_EPS = 1e-6


def _milli_down(cores: float) -> int:
    return max(0, math.floor(cores * 1000 + _CPU_EPS))


def _milli_up(cores: float) -> int:
    return max(0, math.ceil(cores * 1000 - _CPU_EPS))


@dataclass
class _View:
    """One cluster over every host, for one GPU model (``""``: CPU-only requests).
    ``devices[node]`` lists the host's device indices of the model, in the cluster's GPU
    order."""

    model: str
    cluster: Cluster
    devices: list[tuple[int, ...]]


class HostIndex:
    """Live hosts, indexed for placement. ``hosts`` are shared, not copied: placements update
    their ``used_*`` as :func:`~crucible.core.scheduling.plan` expects."""

    def __init__(
        self,
        hosts: Iterable[HostCapacity],
        policy: PlacementPolicy | str = "best-fit",
        *,
        max_candidates: int = 16,
    ) -> None:
        self._hosts = sorted(hosts, key=lambda h: h.id)
        self._node = {h.id: i for i, h in enumerate(self._hosts)}
        if len(self._node) != len(self._hosts):
            raise ValueError("host ids must be unique")
        self._policy = make_policy(policy) if isinstance(policy, str) else policy
        self._max_candidates = max_candidates
        self._views: dict[str, _View] = {}

    def place(
        self,
        cpu: float,
        memory_mib: int,
        gpu_model: str | None = None,
        gpu_count: int = 0,
        exclude: Collection[str] = (),
        prefer: str | None = None,
    ) -> tuple[HostCapacity, tuple[int, ...]] | None:
        """Place one container on a host not in ``exclude`` (host ids): ``cpu`` cores,
        ``memory_mib`` and ``gpu_count`` whole free GPUs of ``gpu_model``; on ``prefer``
        when that host has the room. Returns the host (its ``used_*`` updated) and the
        device indices taken, or ``None`` (nothing changed) when no such host has the room
        now."""
        model = gpu_model or ""
        count = gpu_count if model else 0
        view = self._view(model if count else "")
        req = Request(
            cpu_milli=_milli_up(cpu),
            memory_mib=max(0, memory_mib),
            num_gpu=count,
            gpu_milli=FULL if count else 0,
            models=frozenset({view.model}) if count else frozenset(),
        )
        barred = {self._node[h] for h in exclude if h in self._node}
        p = None
        home = self._node.get(prefer) if prefer is not None else None
        if home is not None and home not in barred:  # a node is the same host in every view
            p = view.cluster.place_on(home, req)
        if p is None:
            p = view.cluster.place(req, barred)
        if p is None:
            return None
        host = self._hosts[p.node]
        taken = tuple(view.devices[p.node][j] for j, _ in p.gpus)
        host.used_cpu += cpu
        host.used_memory_mib += memory_mib
        host.used_gpus.update(taken)
        self.refresh(host.id)
        return host, taken

    def refresh(self, host_id: str) -> None:
        """Read a host's usage again into every view (after a change made elsewhere). An
        unknown host id is ignored."""
        node = self._node.get(host_id)
        if node is None:
            return
        for view in self._views.values():
            self._sync(view, node)

    def _view(self, model: str) -> _View:
        view = self._views.get(model)
        if view is not None:
            return view
        devices = [tuple(i for i, m in h.gpus if m == model or not model) for h in self._hosts]
        nodes = [
            NodeSpec(
                id=h.id,
                cpu_milli=min(MAX_NODE_CPU_MILLI, _milli_down(h.cpu)),
                memory_mib=min(_MAX_MEMORY_MIB, max(0, h.memory_mib)),
                gpu_count=len(devs),
                gpu_model=(model or _ANY_MODEL) if devs else "",
            )
            for h, devs in zip(self._hosts, devices, strict=True)
        ]
        cluster = Cluster.from_nodes(nodes, self._policy, max_candidates=self._max_candidates)
        view = self._views[model] = _View(model, cluster, devices)
        for node in range(len(self._hosts)):
            self._sync(view, node)
        return view

    def _sync(self, view: _View, node: int) -> None:
        h = self._hosts[node]
        spec = view.cluster.nodes[node]
        view.cluster.set_free(
            node,
            min(spec.cpu_milli, _milli_down(h.cpu - h.used_cpu)),
            min(spec.memory_mib, max(0, h.memory_mib - h.used_memory_mib)),
            [0 if d in h.used_gpus else FULL for d in view.devices[node]],
        )
