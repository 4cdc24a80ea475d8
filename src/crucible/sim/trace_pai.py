"""An adapter for Alibaba's PAI GPU trace 2020 (``cluster-trace-gpu-v2020`` in Alibaba's
clusterdata repository; Weng et al., "MLaaS in the Wild", NSDI 2022).

Written from the published column layout (the files ship without a header row; a file that
has one is read too):

* ``pai_task_table.csv``: ``job_name, task_name, inst_num, status, start_time, end_time,
  plan_cpu, plan_mem, plan_gpu, gpu_type``. ``plan_cpu`` is CPU in percent of a core (600 =
  6 cores), ``plan_mem`` GB of memory, ``plan_gpu`` GPUs in percent (50 = half a GPU, 800 =
  8 GPUs), all per instance; ``gpu_type`` the GPU model (``MISC``: older generations; empty:
  any). One task becomes one :class:`~crucible.sim.trace_format.TraceTask` whose ``nodes``
  are its ``inst_num`` instances; the scenario's ``instances`` says whether they replay as a
  gang or as independent tasks (:data:`~crucible.sim.scenario.PAI_INSTANCES`).
* ``pai_job_table.csv`` (optional, beside it): ``job_name, inst_id, user, status,
  start_time, end_time``. When present, a task arrives at its job's submission time (the
  job's ``start_time``); otherwise at the task's launch time.
* ``pai_machine_spec.csv``: ``machine, gpu_type, cap_cpu, cap_mem, cap_gpu`` (cores, GB,
  GPUs): the fleet, one node per machine.

Tasks without an end time (still running or waiting when the trace was cut) or with an end
before their start cannot be replayed and are skipped; :func:`read_pai_tasks` returns how
many. Times are seconds (shifted by a constant in the trace); arrivals are made relative to
the earliest one.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from crucible.core.placement import FULL, NodeSpec
from crucible.sim.scenario import ScenarioError
from crucible.sim.trace_format import MAX_NODES, MAX_SECONDS, TraceTask, task_request

__all__ = ["JOB_COLUMNS", "MACHINE_COLUMNS", "TASK_COLUMNS", "read_pai_nodes", "read_pai_tasks"]

TASK_COLUMNS = (
    "job_name", "task_name", "inst_num", "status", "start_time", "end_time", "plan_cpu",
    "plan_mem", "plan_gpu", "gpu_type",
)  # fmt: skip
JOB_COLUMNS = ("job_name", "inst_id", "user", "status", "start_time", "end_time")
MACHINE_COLUMNS = ("machine", "gpu_type", "cap_cpu", "cap_mem", "cap_gpu")


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file (the PAI 2020 trace's {path.name})") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror})") from None
    with f:
        try:
            for i, raw in enumerate(csv.reader(f), start=1):
                if not raw or (i == 1 and raw[0].strip() == columns[0]):
                    continue  # a header row, where someone added one
                if len(raw) < len(columns):
                    raise ScenarioError(
                        f"{path}: line {i}: {len(raw)} columns; the PAI 2020 layout has "
                        f"{len(columns)}: {', '.join(columns)}"
                    )
                yield i, {c: raw[k].strip() for k, c in enumerate(columns)}
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ScenarioError(f"{path}: not a UTF-8 CSV file ({exc})") from None


def _float(path: Path, line: int, row: dict[str, str], col: str) -> float | None:
    text = row[col]
    if text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        raise ScenarioError(f"{path}: line {line}: {col} must be a number, not {text!r}") from None
    if math.isnan(v):
        return None
    if math.isinf(v):
        raise ScenarioError(f"{path}: line {line}: {col} must be finite, not {text!r}")
    return v


def read_pai_tasks(path: Path) -> tuple[list[TraceTask], dict[str, int]]:
    """The replayable tasks of ``pai_task_table.csv`` (sorted by arrival) and the number of
    rows skipped, by reason."""
    submit: dict[str, float] = {}
    jobs = path.with_name("pai_job_table.csv")
    if jobs.is_file():
        for line, row in _rows(jobs, JOB_COLUMNS):
            t = _float(jobs, line, row, "start_time")
            if t is not None:
                submit[row["job_name"]] = t
    skipped: Counter[str] = Counter()
    raw: list[tuple[float, float, str, dict[str, str], int]] = []
    for line, row in _rows(path, TASK_COLUMNS):
        start = _float(path, line, row, "start_time")
        end = _float(path, line, row, "end_time")
        if start is None or end is None:
            skipped["no start or end time"] += 1
            continue
        if end <= start:
            skipped["ends before it starts"] += 1
            continue
        arrival = min(start, submit.get(row["job_name"], start))
        raw.append((arrival, end - start, f"{row['job_name']}/{row['task_name']}", row, line))
    if not raw:
        raise ScenarioError(f"{path}: no task with a start and an end time to replay")
    t0 = min(r[0] for r in raw)
    out: list[TraceTask] = []
    for arrival, duration, name, row, line in raw:
        for what, seconds in (
            ("its run (end_time - start_time)", duration),
            ("its arrival after the first", arrival - t0),
        ):
            if seconds > MAX_SECONDS:
                raise ScenarioError(
                    f"{path}: line {line}: {what} is {seconds:,.0f} s, over the "
                    f"{MAX_SECONDS:,.0f} s a trace may span"
                )
        plan_gpu = _float(path, line, row, "plan_gpu") or 0.0
        if plan_gpu <= 0:
            gpus, milli = 0, 0
        elif plan_gpu < 100:
            gpus, milli = 1, max(1, round(plan_gpu * 10))
        else:
            gpus, milli = math.ceil(plan_gpu / 100 - 1e-9), FULL
        model = row["gpu_type"]
        out.append(
            TraceTask(
                id=name,
                submit_ms=round((arrival - t0) * 1000),
                duration_ms=max(1, round(duration * 1000)),
                request=task_request(
                    gpus,
                    milli,
                    max(0, round((_float(path, line, row, "plan_cpu") or 0.0) * 10)),
                    max(0, round((_float(path, line, row, "plan_mem") or 0.0) * 1024)),
                    (model,) if gpus and model else (),
                ),
                nodes=_instances(path, line, row),
            )
        )
    out.sort(key=lambda t: t.submit_ms)
    return out, dict(skipped)


def _instances(path: Path, line: int, row: dict[str, str]) -> int:
    """A task's ``inst_num``: its gang's members (1 when empty or below 1), at most
    :data:`~crucible.sim.trace_format.MAX_NODES`, as the generic format's ``nodes``."""
    n = max(1, round(_float(path, line, row, "inst_num") or 1))
    if n > MAX_NODES:
        raise ScenarioError(
            f"{path}: line {line}: inst_num must be at most {MAX_NODES:,}, not {row['inst_num']}"
        )
    return n


def read_pai_nodes(path: Path) -> list[NodeSpec]:
    """One node per row of ``pai_machine_spec.csv``."""
    out: list[NodeSpec] = []
    for line, row in _rows(path, MACHINE_COLUMNS):
        gpus = max(0, round(_float(path, line, row, "cap_gpu") or 0))
        out.append(
            NodeSpec(
                id=row["machine"],
                cpu_milli=max(0, round((_float(path, line, row, "cap_cpu") or 0) * 1000)),
                memory_mib=max(0, round((_float(path, line, row, "cap_mem") or 0) * 1024)),
                gpu_count=gpus,
                gpu_model=(row["gpu_type"] or "unknown") if gpus else "",
            )
        )
    if not out:
        raise ScenarioError(f"{path}: no machines")
    return out
