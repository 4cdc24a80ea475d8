"""Load the Alibaba GPU cluster trace 2023 ("openb") into placement-core types.

Pure apart from reading the CSV files it is pointed at. The directory is a parameter: the
trace is not shipped with Crucible (scenarios name it with ``trace_dir`` or the
``CRUCIBLE_OPENB_TRACE_DIR`` setting, see :func:`crucible.sim.fleet.openb_dir`).

* :func:`load_nodes` reads ``openb_node_list_all_node.csv`` (or ``..._gpu_node.csv``): one
  :class:`~crucible.core.placement.NodeSpec` per row, GPU model as written
  (``G1``..``G3`` are undisclosed internal types and are kept as those names; ``""`` when
  the node has no GPU).
* :func:`load_pods` reads ``openb_pod_list_<name>.csv``: one :class:`TracePod` per row with
  its :class:`~crucible.core.placement.Request` (``gpu_spec`` split on ``|``
  into the acceptable models) and its times in seconds.
* :func:`replicate` copies a node list until it holds at least a target number of GPUs.
* :func:`openb_tasks` is the adapter to the generic trace format
  (:mod:`crucible.sim.trace_format`): a pod arrives at its creation time, runs until its
  deletion time once started, and gives up at its deletion time if it has not started.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from crucible.core.placement import NodeSpec, Request
from crucible.sim.scenario import ScenarioError
from crucible.sim.trace_format import MAX_COUNT, MAX_SECONDS, TraceTask

_T = TypeVar("_T")

__all__ = [
    "TracePod",
    "gpu_count",
    "has_times",
    "load_nodes",
    "load_pods",
    "openb_tasks",
    "read_openb_nodes",
    "read_openb_pods",
    "replicate",
    "workload_classes",
]


@dataclass(frozen=True)
class TracePod:
    """One task of the trace. Times are seconds; ``None`` where the trace leaves them empty."""

    name: str
    request: Request
    qos: str
    phase: str
    creation_time: int
    deletion_time: int | None
    scheduled_time: int | None


def _int(text: str, most: float = MAX_COUNT, *, count: str = "") -> int | None:
    """The number in ``text`` (``None`` when empty), truncated to a whole one; a ``count``
    (named by the column) must be whole already: 1.7 GPUs is a mistake, not 1 GPU."""
    text = text.strip()
    if not text:
        return None
    v = float(text)  # ValueError names a value that is not a number
    if not math.isfinite(v) or abs(v) > most:
        raise ValueError(f"{text!r} is not a number within ±{most:,.0f}")
    if count and v != int(v):
        raise ValueError(f"{count} must be a whole number, not {text!r}")
    return int(v)


def _read(path: Path, convert: Callable[[dict[str, str]], _T]) -> list[_T]:
    """``convert`` of each row of an openb CSV file, in file order; a row it cannot convert
    (a missing column, a value that is not a number) stops the run naming file and line."""
    out: list[_T] = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # callers name a missing file
        reader = csv.DictReader(f)
        try:
            for row in reader:
                try:
                    out.append(convert(row))
                except KeyError as exc:
                    raise ScenarioError(
                        f"{path}: line {reader.line_num}: no column {exc.args[0]!r} (an openb "
                        "file has a header row naming its columns)"
                    ) from None
                except (AttributeError, ValueError) as exc:  # a short row's None, a bad value
                    raise ScenarioError(f"{path}: line {reader.line_num}: {exc}") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ScenarioError(f"{path}: not a UTF-8 CSV file ({exc})") from None
    return out


def load_nodes(directory: Path | str, *, gpu_only: bool = False) -> list[NodeSpec]:
    """The trace's nodes in file order. ``gpu_only`` reads the 1,213-node GPU list."""
    name = "openb_node_list_gpu_node.csv" if gpu_only else "openb_node_list_all_node.csv"
    return read_openb_nodes(Path(directory) / name)


def read_openb_nodes(path: Path) -> list[NodeSpec]:
    """The nodes of one openb node list file, in file order."""

    def node(row: dict[str, str]) -> NodeSpec:
        gpus = _int(row["gpu"], count="gpu") or 0
        return NodeSpec(
            id=row["sn"],
            cpu_milli=_int(row["cpu_milli"]) or 0,
            memory_mib=_int(row["memory_mib"]) or 0,
            gpu_count=gpus,
            gpu_model=(row.get("model") or "").strip() if gpus else "",
        )

    return _read(path, node)


def load_pods(directory: Path | str, name: str = "default") -> list[TracePod]:
    """The tasks of ``openb_pod_list_<name>.csv`` in file order (creation order)."""
    return read_openb_pods(Path(directory) / f"openb_pod_list_{name}.csv")


def read_openb_pods(path: Path) -> list[TracePod]:
    """The tasks of one openb pod list file, in file order."""

    def pod(row: dict[str, str]) -> TracePod:
        num_gpu = _int(row["num_gpu"], count="num_gpu") or 0
        gpu_milli = _int(row["gpu_milli"]) or 0
        if num_gpu == 0:
            gpu_milli = 0
        elif num_gpu > 1 or gpu_milli <= 0:
            gpu_milli = 1000
        spec = (row.get("gpu_spec") or "").strip()
        models = frozenset(m.strip() for m in spec.split("|") if m.strip())
        return TracePod(
            name=row["name"],
            request=Request(
                cpu_milli=_int(row["cpu_milli"]) or 0,
                memory_mib=_int(row["memory_mib"]) or 0,
                num_gpu=num_gpu,
                gpu_milli=gpu_milli,
                models=models,
            ),
            qos=row.get("qos") or "",
            phase=row.get("pod_phase") or "",
            # Absent from the multi-GPU pod lists (openb_pod_list_multigpu*.csv), which only
            # an inflation replay uses: 0, and no deletion time (see has_times).
            creation_time=_int(row.get("creation_time") or "", MAX_SECONDS) or 0,
            deletion_time=_int(row.get("deletion_time") or "", MAX_SECONDS),
            scheduled_time=_int(row.get("scheduled_time") or "", MAX_SECONDS),
        )

    return _read(path, pod)


def has_times(pods: Sequence[TracePod]) -> bool:
    """Whether a pod list records when its pods came and went (the multi-GPU lists do not:
    they replay only as an inflation, pods drawn at random)."""
    return any(p.creation_time or p.deletion_time is not None for p in pods)


def openb_tasks(pods: Sequence[TracePod]) -> list[TraceTask]:
    """openb pods as generic trace tasks (see the module docstring), in arrival order. A pod
    without a deletion time ran until the trace was cut: it is left out (no duration)."""
    out = []
    for p in pods:
        if p.deletion_time is None or p.deletion_time <= p.creation_time:
            continue
        life = (p.deletion_time - p.creation_time) * 1000
        out.append(TraceTask(p.name, p.creation_time * 1000, life, p.request, 1, life))
    out.sort(key=lambda t: t.submit_ms)
    return out


def gpu_count(nodes: Sequence[NodeSpec]) -> int:
    """GPUs in a node list."""
    return sum(n.gpu_count for n in nodes)


def replicate(nodes: Sequence[NodeSpec], target_gpus: int) -> list[NodeSpec]:
    """Copies of ``nodes`` (ids suffixed ``-r<k>``, copy 0 keeps them) up to ``target_gpus``.

    Whole copies while a whole copy still fits under the target, then a prefix of one more
    copy until the fleet holds at least ``target_gpus`` GPUs (it overshoots by less than one
    node's GPUs); always at least one whole copy. The fleet's mix of models, CPU-only nodes
    and shapes is thus the trace's.
    """
    per = gpu_count(nodes)
    if per <= 0:
        raise ValueError("the node list has no GPUs to replicate")
    out = list(nodes)
    have = per
    k = 1
    while have < target_gpus:
        for n in nodes:
            if have >= target_gpus:
                break
            out.append(replace(n, id=f"{n.id}-r{k}"))
            have += n.gpu_count
        k += 1
    return out


def workload_classes(
    requests: Sequence[Request], *, max_classes: int = 16, share_step: int = 50
) -> tuple[tuple[Request, float], ...]:
    """The GPU task-class distribution of ``requests``, for the ``fgd`` policy.

    Classes are (GPU count, GPU share rounded up to ``share_step``, acceptable models); each
    class's request carries the mean CPU and memory of its members. CPU-only requests are
    left out (they add no GPU fragmentation). The ``max_classes`` heaviest classes are kept,
    weights (fractions of the kept GPU tasks) sum to 1, heaviest first.
    """
    groups: dict[tuple[int, int, frozenset[str]], list[Request]] = defaultdict(list)
    for r in requests:
        if r.num_gpu == 0:
            continue
        milli = min(1000, -(-r.gpu_milli // share_step) * share_step) if r.shared else 1000
        groups[(r.num_gpu, milli, r.models)].append(r)
    top = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][0], kv[0][1]))[:max_classes]
    total = sum(len(v) for _, v in top)
    out: list[tuple[Request, float]] = []
    for (num, milli, models), members in top:
        cpu = sum(m.cpu_milli for m in members) // len(members)
        mem = sum(m.memory_mib for m in members) // len(members)
        out.append((Request(cpu, mem, num, milli, models), len(members) / total))
    return tuple(out)
