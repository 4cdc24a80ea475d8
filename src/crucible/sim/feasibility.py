"""Tasks no node of the fleet could ever run, and why: found when they arrive, never queued.

A task is *impossible* when even the empty fleet could not hold it: it asks for GPU models no
node has, more GPUs than any node of its models has, more CPU or memory than any such node
has, more of each than any one node has at once, or (a gang) more members than there are
distinct nodes that could each hold one. Waiting cannot help such a task, so the simulator
reports it with its reason instead of letting it wait until it gives up.

Pure: a function of the node list and the request (answers are memoised per request shape).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from crucible.core.placement import NodeSpec, Request

__all__ = ["IMPOSSIBLE_LISTED", "IMPOSSIBLE_REASONS", "Feasibility", "ImpossibleLog"]

IMPOSSIBLE_LISTED = 50  # impossible tasks listed one by one in a report (all are counted)

IMPOSSIBLE_REASONS: dict[str, str] = {
    "unknown_gpu_model": "asks for a GPU model that no node of the fleet has",
    "too_many_gpus": "asks for more GPUs per node than any node of its GPU models has",
    "too_much_cpu": "asks for more CPU per node than any node that could take it has",
    "too_much_memory": "asks for more memory per node than any node that could take it has",
    "no_node_fits_all": "some node has enough of each resource, but none has all at once",
    "gang_too_large": "a gang needs one distinct node per member; fewer nodes could hold one",
}
"""Each reason a task is impossible, in the order they are checked."""

# (GPU model, GPUs, CPU milli, memory MiB, region) -> how many nodes have that shape
_Shape = tuple[str, int, int, int, str]


class Feasibility:
    """Answers "could the empty fleet ever run this task, and if not, why?"."""

    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        shapes: Counter[_Shape] = Counter(
            (n.gpu_model, n.gpu_count, n.cpu_milli, n.memory_mib, n.region) for n in nodes
        )
        self.shapes = sorted(shapes.items())
        self.models = {s[0] for s, _ in self.shapes if s[1] > 0}
        self._memo: dict[tuple[Request, int], str | None] = {}

    def reason(self, req: Request, members: int = 1) -> str | None:
        """``None`` when some state of the fleet could run ``members`` copies of ``req`` on
        distinct nodes; else the first key of :data:`IMPOSSIBLE_REASONS` that applies."""
        key = (req, members)
        if key not in self._memo:
            self._memo[key] = self._reason(req, members)
        return self._memo[key]

    def _reason(self, req: Request, members: int) -> str | None:
        cands = [
            (s, n)
            for s, n in self.shapes
            if (not req.regions or s[4] in req.regions)
            and (req.num_gpu == 0 or (s[1] > 0 and (not req.models or s[0] in req.models)))
        ]
        if not cands:
            return "unknown_gpu_model" if req.num_gpu else "no_node_fits_all"
        if max(s[1] for s, _ in cands) < req.num_gpu:
            return "too_many_gpus"
        if max(s[2] for s, _ in cands) < req.cpu_milli:
            return "too_much_cpu"
        if max(s[3] for s, _ in cands) < req.memory_mib:
            return "too_much_memory"
        fitting = sum(
            n
            for s, n in cands
            if s[1] >= req.num_gpu and s[2] >= req.cpu_milli and s[3] >= req.memory_mib
        )
        if fitting == 0:
            return "no_node_fits_all"
        if fitting < members:
            return "gang_too_large"
        return None


class ImpossibleLog:
    """The impossible tasks of a run: counted by reason, the first
    :data:`IMPOSSIBLE_LISTED` listed with what they asked for."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()
        self.listed: list[dict[str, Any]] = []

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, task: dict[str, Any]) -> None:
        self.by_reason[reason] += 1
        if len(self.listed) < IMPOSSIBLE_LISTED:
            self.listed.append({"task": task.pop("task"), "reason": reason, **task})

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_reason": dict(sorted(self.by_reason.items())),
            "reasons": {k: IMPOSSIBLE_REASONS[k] for k in sorted(self.by_reason)},
            "listed": self.listed,
        }
