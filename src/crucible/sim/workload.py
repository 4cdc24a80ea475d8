"""The simulated workload: jobs, and the sources that emit them in arrival order.

A :class:`Job` is one task (placement kind) or one lease request (market kind): ``nodes``
members of ``request`` each (a gang when ``nodes > 1``), ``duration_ms`` of work, and a time
by which it gives up if it has not started (``deadline_ms``).

Sources are lazy (one pending job each), so a week at 100,000 GPUs never holds its whole
workload in memory:

* :class:`ClassSource`: Poisson arrivals of one synthetic class, seeded per class;
* :class:`InflateSource`: FGD's experiment (Weng et al., ATC 2023): pods drawn at random
  (with replacement, seeded) from the trace, one per virtual second, that never leave and
  give up at once if they do not fit, until the GPUs they asked for reach ``target`` times
  the fleet's;
* :class:`TraceSource`: the openb pod list as recorded (arrival at ``creation_time``,
  departure at ``deletion_time``; a pod not started by its deletion time gives up), each pod
  ``copies`` times when the fleet is the node list replicated;
* :class:`TaskSource`: a task trace in the generic format (or read by an adapter, see
  :func:`load_task_trace`) as recorded: arrival at ``submit``, ``duration`` once started,
  gangs kept as gangs, a task not started within its patience gives up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crucible.core.placement import FULL, Request
from crucible.sim.scenario import ClassSpec, ScenarioError
from crucible.sim.trace import TracePod, has_times, openb_tasks, read_openb_pods
from crucible.sim.trace_format import TraceTask, read_tasks
from crucible.sim.trace_pai import read_pai_tasks

__all__ = [
    "ClassSource",
    "InflateSource",
    "Job",
    "JobSource",
    "TaskSource",
    "TraceSource",
    "arrival_rate_per_ms",
    "load_task_trace",
]

MS_PER_HOUR = 3_600_000


@dataclass
class Job:
    """One job; the drivers update ``remaining_ms``, ``started_ms`` and ``attempts``."""

    id: int
    cls: str
    arrival_ms: int
    duration_ms: int
    deadline_ms: int
    request: Request  # what each member needs (placement kind)
    nodes: int = 1
    gpus: int = 1  # whole GPUs per node (market kind)
    models: tuple[str, ...] = ()
    tier: str = "on_demand"
    bid_micros: int | None = None
    remaining_ms: int = 0
    started_ms: int | None = None
    attempts: int = 0
    epoch: int = 0  # bumped when a run is cut short, so its pending finish is ignored
    fixed_end: bool = False  # ends at ``deadline_ms`` however late it started (trace pods)
    forever: bool = False  # never ends (the inflation experiment: arrivals only)
    name: str = ""  # the task's name in its trace ("" for synthetic jobs)

    def __post_init__(self) -> None:
        self.remaining_ms = self.duration_ms


class JobSource:
    """Emits jobs in arrival order: :meth:`peek` the next arrival time, :meth:`pop` the job."""

    def peek(self) -> int | None:
        raise NotImplementedError

    def pop(self, next_id: int) -> Job:
        raise NotImplementedError

    def after_end(self) -> int:
        """Jobs of a recorded trace left unemitted because they arrive at or after the
        run's end (``duration_hours``); 0 for a source that only generates up to it."""
        return 0


def arrival_rate_per_ms(c: ClassSpec, fleet_gpus: int) -> float:
    """Arrivals per ms so the class offers ``load`` x the fleet's GPUs on average (Little)."""
    busy = c.load * fleet_gpus
    return busy / (c.mean_gpus * c.duration_hours * MS_PER_HOUR)


class ClassSource(JobSource):
    """Poisson arrivals of one class from time 0 until ``end_ms``."""

    def __init__(
        self,
        c: ClassSpec,
        fleet_gpus: int,
        seed: int,
        index: int,
        end_ms: int,
        ref_price_micros: dict[str, int],
    ) -> None:
        self.c, self.end_ms = c, end_ms
        self.rng = random.Random(f"class:{seed}:{index}:{c.name}")
        self.rate = arrival_rate_per_ms(c, fleet_gpus)
        self.ref = ref_price_micros
        self.next_ms: int | None = None
        self._advance(0.0)

    def _advance(self, t: float) -> None:
        if self.rate <= 0:
            self.next_ms = None
            return
        t += self.rng.expovariate(self.rate)
        self.next_ms = math.ceil(t) if t < self.end_ms else None
        self._t = t

    def peek(self) -> int | None:
        return self.next_ms

    def pop(self, next_id: int) -> Job:
        assert self.next_ms is not None
        c, rng, now = self.c, self.rng, self.next_ms
        gpus = rng.choice(c.gpus)
        nodes = rng.choice(c.nodes)
        duration = max(1, round(rng.expovariate(1 / (c.duration_hours * MS_PER_HOUR))))
        bid = None
        if c.bid is not None:
            # the bid is a fraction of the class's reference price (its first model's mean ask)
            ref = self.ref.get(c.models[0], 0) if c.models else 0
            bid = round(ref * rng.uniform(*c.bid))
        shared = c.gpu_milli < FULL
        req = Request(
            c.cpu * 1000,
            c.memory_gib * 1024,
            gpus,
            c.gpu_milli if shared else FULL,
            frozenset(c.models),
        )
        job = Job(
            id=next_id,
            cls=c.name,
            arrival_ms=now,
            duration_ms=duration,
            deadline_ms=now + round(c.patience_hours * MS_PER_HOUR),
            request=req,
            nodes=nodes,
            gpus=gpus,
            models=c.models,
            tier=c.tier,
            bid_micros=bid,
        )
        self._advance(self._t)
        return job


class TraceSource(JobSource):
    """The openb pods as recorded, ``copies`` of each (pods sorted by creation time)."""

    def after_end(self) -> int:
        return (len(self.pods) - self.i) * self.copies - self.k

    def __init__(self, pods: Sequence[TracePod], copies: int, end_ms: int | None) -> None:
        self.pods = sorted(pods, key=lambda p: p.creation_time)
        self.copies = max(1, copies)
        self.end_ms = end_ms
        self.i = 0
        self.k = 0

    def peek(self) -> int | None:
        if self.i >= len(self.pods):
            return None
        t = self.pods[self.i].creation_time * 1000
        return None if self.end_ms is not None and t >= self.end_ms else t

    def pop(self, next_id: int) -> Job:
        pod = self.pods[self.i]
        copy = self.k
        self.k += 1
        if self.k >= self.copies:
            self.k = 0
            self.i += 1
        start = pod.creation_time * 1000
        end = (pod.deletion_time if pod.deletion_time is not None else pod.creation_time) * 1000
        return Job(
            id=next_id,
            cls="openb",
            arrival_ms=start,
            duration_ms=max(0, end - start),
            deadline_ms=end,
            request=pod.request,
            gpus=pod.request.num_gpu,
            models=tuple(sorted(pod.request.models)),
            fixed_end=True,
            name=pod.name if self.copies == 1 else f"{pod.name}-c{copy}",
        )


class InflateSource(JobSource):
    """Random trace pods, one per second, until their GPU demand reaches ``target`` x the
    fleet's GPUs (see the module docstring)."""

    def __init__(self, pods: Sequence[TracePod], fleet_gpus: int, target: float, seed: int) -> None:
        self.pods = list(pods)
        self.rng = random.Random(f"inflate:{seed}")
        self.goal_milli = target * fleet_gpus * FULL
        self.arrived_milli = 0
        self.t = 0

    def peek(self) -> int | None:
        return self.t if self.pods and self.arrived_milli < self.goal_milli else None

    def pop(self, next_id: int) -> Job:
        pod = self.rng.choice(self.pods)
        self.arrived_milli += pod.request.gpu_demand_milli
        at = self.t
        self.t += 1000
        return Job(
            id=next_id,
            cls="openb",
            arrival_ms=at,
            duration_ms=0,
            deadline_ms=at,
            request=pod.request,
            gpus=pod.request.num_gpu,
            models=tuple(sorted(pod.request.models)),
            forever=True,
        )


def load_task_trace(path: Path, fmt: str) -> tuple[list[TraceTask], dict[str, int]]:
    """The tasks of a trace file in format ``fmt`` (scenario.TRACE_FORMATS), in arrival
    order, and the rows its adapter could not replay, by reason."""
    if fmt == "pai":
        return read_pai_tasks(path)
    if fmt == "openb":
        try:
            pods = read_openb_pods(path)
        except FileNotFoundError:
            raise ScenarioError(f"{path}: no such trace file") from None
        except KeyError as exc:
            raise ScenarioError(f"{path}: not an openb pod list (no column {exc})") from None
        except (ValueError, UnicodeDecodeError, IsADirectoryError) as exc:
            raise ScenarioError(f"{path}: not a readable openb pod list ({exc})") from None
        if pods and not has_times(pods):
            raise ScenarioError(
                f"{path}: this openb pod list records no creation or deletion times (the "
                "multi-GPU lists do not), so it cannot be replayed as recorded: use it as an "
                'openb workload with replay = "inflate" (docs/simulator.md)'
            )
        tasks = openb_tasks(pods)
        left = len(pods) - len(tasks)
        return tasks, ({"no deletion time": left} if left else {})
    return read_tasks(path), {}


class TaskSource(JobSource):
    """Trace tasks as recorded (``tasks`` in arrival order), until ``end_ms`` if given.

    With ``independent``, a task of ``nodes`` members is ``nodes`` tasks of one member each,
    all arriving at its submit time (named ``id#k``, k from 0): PAI's instances, placed one
    by one, where one machine may take several.
    """

    def __init__(
        self,
        tasks: Sequence[TraceTask],
        patience_ms: int,
        end_ms: int | None,
        *,
        independent: bool = False,
    ) -> None:
        self.tasks, self.patience_ms, self.end_ms = tasks, patience_ms, end_ms
        self.independent = independent
        self.i = 0
        self.k = 0  # with ``independent``: the instance of tasks[i] to emit next

    def peek(self) -> int | None:
        if self.i >= len(self.tasks):
            return None
        t = self.tasks[self.i].submit_ms
        return None if self.end_ms is not None and t >= self.end_ms else t

    def after_end(self) -> int:
        rest = self.tasks[self.i :]
        if not self.independent:
            return len(rest)
        return sum(t.nodes for t in rest) - self.k

    def pop(self, next_id: int) -> Job:
        t = self.tasks[self.i]
        nodes, name = t.nodes, t.id
        if self.independent and t.nodes > 1:
            nodes, name = 1, f"{t.id}#{self.k}"
            self.k += 1
        if nodes == t.nodes or self.k == t.nodes:
            self.i, self.k = self.i + 1, 0
        patience = self.patience_ms if t.patience_ms is None else t.patience_ms
        return Job(
            id=next_id,
            cls="trace",
            arrival_ms=t.submit_ms,
            duration_ms=t.duration_ms,
            deadline_ms=t.submit_ms + patience,
            request=t.request,
            nodes=nodes,
            gpus=t.request.num_gpu,
            models=tuple(sorted(t.request.models)),
            name=name,
        )
