"""The simulator's generic trace format: tasks and nodes as CSV (or Parquet with pyarrow).

Any GPU trace can be replayed once it is written in this format (``docs/simulator.md``
documents it; :mod:`crucible.sim.trace` and :mod:`crucible.sim.trace_pai` are adapters that
read openb's and Alibaba PAI 2020's layouts into the same :class:`TraceTask` records).

Tasks, one row each (a header row names the columns; order is free):

========== ======== =================================================================
column     default  meaning
========== ======== =================================================================
id         required the task's name (shown where a task is listed)
submit_s   required when it arrives, seconds from the start of the trace (>= 0)
duration_s required how long it runs once started, seconds (> 0)
nodes      1        gang members: all start at once on distinct nodes, or none does
gpus       0        GPUs per member (whole GPUs, or 1 with ``gpu_milli`` < 1000)
gpu_milli  1000     a share of one GPU, 1..1000 (only with gpus = 1)
cpu_milli  0        CPU per member, thousandths of a core
memory_mib 0        memory per member, MiB
models     ""       acceptable GPU models separated by ``|``; empty: any
patience_s ""       how long it waits before giving up; empty: the scenario's default
========== ======== =================================================================

Nodes, one row per node shape: ``id``, ``gpus`` (0), ``gpu_model`` (required when
``gpus`` > 0), ``cpu_milli``, ``memory_mib`` and ``count`` (1: that many nodes of the shape).

Every problem is a :class:`~crucible.sim.scenario.ScenarioError` naming the file, the row
and the column. Pure apart from reading (and, for the sample generator, writing) files.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.core.placement import (
    FULL,
    MAX_NODE_CPU_MILLI,
    MAX_NODE_MEMORY_MIB,
    NodeSpec,
    Request,
)
from crucible.sim.scenario import ScenarioError

__all__ = [
    "NODE_COLUMNS",
    "TASK_COLUMNS",
    "TraceTask",
    "read_nodes",
    "read_rows",
    "read_tasks",
    "task_request",
    "write_tasks",
]

TASK_COLUMNS = (
    "id", "submit_s", "duration_s", "nodes", "gpus", "gpu_milli", "cpu_milli", "memory_mib",
    "models", "patience_s",
)  # fmt: skip
NODE_COLUMNS = ("id", "gpus", "gpu_model", "cpu_milli", "memory_mib", "count")
MAX_NODES = 1_000_000  # a node file larger than this is a mistake, not a fleet
# Times (submit_s, duration_s, patience_s) up to about 317 years: a Unix timestamp fits,
# a typo of a few extra digits does not. Counts and sizes (nodes, gpus, cpu_milli, ...)
# up to 10**15: larger is a mistake, and would overflow the core's arithmetic.
MAX_SECONDS = 1e10
MAX_COUNT = 1e15


@dataclass(frozen=True)
class TraceTask:
    """One task of a trace: ``nodes`` members of ``request`` each, arriving at ``submit_ms``
    and running ``duration_ms`` once started; ``patience_ms`` ``None``: the scenario's."""

    id: str
    submit_ms: int
    duration_ms: int
    request: Request
    nodes: int = 1
    patience_ms: int | None = None


def _text(value: object) -> str:
    """A Parquet value as the text a CSV would hold: a list (the natural type of ``models``)
    as its items separated by ``|``."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "|".join(str(v) for v in value if v is not None)
    return str(value)


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV file with a header, or of a Parquet file (needs pyarrow);
    every value as text ("" for empty). A Parquet file's "line" is its row number (from 1):
    messages name it as a row (:func:`_at`)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            raise ScenarioError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                "or write the trace as CSV"
            ) from None
        try:
            table = pq.read_table(path).to_pylist()
        except FileNotFoundError:
            raise ScenarioError(f"{path}: no such trace file") from None
        except Exception as exc:  # pyarrow raises several types for a file it cannot read
            raise ScenarioError(f"{path}: not a readable Parquet file ({exc})") from None
        for i, rec in enumerate(table, start=1):
            yield i, {k: _text(v) for k, v in rec.items()}
        return
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such trace file") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot be read ({exc.strerror})") from None
    with f:
        try:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            twice = sorted({h for h in header if header.count(h) > 1})
            if twice:
                raise ScenarioError(f"{path}: line 1: column {twice[0]!r} is named twice")
            for values in reader:
                line = reader.line_num
                if not values:  # a blank line
                    continue
                if len(values) != len(header):
                    raise ScenarioError(
                        f"{_at(path, line)}: {len(values)} values, but the header names "
                        f"{len(header)} columns (a value with a comma must be quoted)"
                    )
                yield line, {k: v.strip() for k, v in zip(header, values, strict=True)}
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ScenarioError(f"{path}: not a UTF-8 CSV file ({exc})") from None


def _check_columns(
    path: Path, row: Mapping[str, str], required: Sequence[str], known: Sequence[str], what: str
) -> None:
    """A clear error for a required column that is missing or one the format does not have
    (naming the format's spelling when only the case differs: names are lower case)."""
    lower = {c.lower(): c for c in row}
    for col in required:
        if col not in row:
            hint = f" (the file has {lower[col]!r}: names are lower case)" if col in lower else ""
            raise ScenarioError(
                f"{path}: no column {col!r}{hint}; a {what} has the columns "
                f"{', '.join(known)} (see docs/simulator.md)"
            )
    unknown = sorted(set(row) - set(known))
    if unknown:
        hint = f" (write {unknown[0].lower()!r})" if unknown[0].lower() in known else ""
        raise ScenarioError(
            f"{path}: column {unknown[0]!r} is not part of the format{hint}; known: "
            f"{', '.join(known)}"
        )


def _unit(path: Path) -> str:
    """What a file's records are called in messages: a Parquet file has rows, not lines."""
    return "row" if path.suffix == ".parquet" else "line"


def _at(path: Path, line: int) -> str:
    return f"{path}: {_unit(path)} {line}"


def _number(
    path: Path,
    line: int,
    row: Mapping[str, str],
    col: str,
    default: float | None,
    most: float = MAX_SECONDS,
) -> float:
    text = row.get(col, "")
    if text == "":
        if default is None:
            raise ScenarioError(f"{_at(path, line)}: {col} is required")
        return default
    try:
        v = float(text)
    except ValueError:
        raise ScenarioError(f"{_at(path, line)}: {col} must be a number, not {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ScenarioError(f"{_at(path, line)}: {col} must be a finite number >= 0, not {text!r}")
    if v > most:
        raise ScenarioError(f"{_at(path, line)}: {col} must be at most {most:,.0f}, not {text}")
    return v


def _whole(
    path: Path, line: int, row: Mapping[str, str], col: str, default: int, most: float = MAX_COUNT
) -> int:
    v = _number(path, line, row, col, default, most)
    if v != int(v):
        raise ScenarioError(f"{_at(path, line)}: {col} must be a whole number, not {row[col]}")
    return int(v)


def task_request(
    gpus: int, gpu_milli: int, cpu_milli: int, memory_mib: int, models: Iterable[str]
) -> Request:
    """The placement core's request for one member (``gpu_milli`` counts only when
    ``gpus`` is 1; whole GPUs otherwise)."""
    milli = 0 if gpus == 0 else gpu_milli if gpus == 1 else FULL
    return Request(cpu_milli, memory_mib, gpus, milli, frozenset(m for m in models if m))


def read_tasks(path: Path) -> list[TraceTask]:
    """The tasks of a generic trace file, sorted by arrival (stable for equal times)."""
    out: list[TraceTask] = []
    seen_columns = False
    ids: dict[str, int] = {}  # id -> its line: a trace pasted in twice is a mistake
    for line, row in read_rows(path):
        if not seen_columns:
            _check_columns(path, row, ("id", "submit_s", "duration_s"), TASK_COLUMNS, "task trace")
            seen_columns = True
        n = _number
        duration = n(path, line, row, "duration_s", None)
        if duration <= 0:
            raise ScenarioError(f"{_at(path, line)}: duration_s must be > 0")
        nodes = _whole(path, line, row, "nodes", 1, MAX_NODES)
        gpus = _whole(path, line, row, "gpus", 0)
        milli = _whole(path, line, row, "gpu_milli", FULL)
        if nodes < 1:
            raise ScenarioError(f"{_at(path, line)}: nodes must be >= 1")
        if not 1 <= milli <= FULL:
            raise ScenarioError(f"{_at(path, line)}: gpu_milli must be within 1..1000")
        if milli < FULL and gpus != 1:
            raise ScenarioError(f"{_at(path, line)}: a GPU share (gpu_milli < 1000) needs gpus = 1")
        patience = row.get("patience_s", "")
        task_id = row["id"]
        if not task_id:
            raise ScenarioError(f"{_at(path, line)}: id is required (every task names itself)")
        _unique(path, line, "task", task_id, ids)
        out.append(
            TraceTask(
                id=task_id,
                submit_ms=round(n(path, line, row, "submit_s", None) * 1000),
                duration_ms=max(1, round(duration * 1000)),
                request=task_request(
                    gpus,
                    milli,
                    _whole(path, line, row, "cpu_milli", 0),
                    _whole(path, line, row, "memory_mib", 0),
                    (m.strip() for m in row.get("models", "").split("|")),
                ),
                nodes=nodes,
                patience_ms=None
                if patience == ""
                else round(n(path, line, row, "patience_s", None) * 1000),
            )
        )
    out.sort(key=lambda t: t.submit_ms)
    return out


def _unique(path: Path, line: int, what: str, key: str, seen: dict[str, int]) -> None:
    """Note that ``key`` is on ``line``; a :class:`ScenarioError` if an earlier line had it."""
    if key in seen:
        raise ScenarioError(
            f"{_at(path, line)}: {what} id {key!r} is also on {_unit(path)} {seen[key]}; "
            f"{what} ids must be unique"
        )
    seen[key] = line


def read_nodes(path: Path) -> list[NodeSpec]:
    """The nodes of a generic node file, each shape repeated ``count`` times (ids suffixed
    ``-<k>`` when ``count`` > 1); node ids that are not empty must be unique."""
    out: list[NodeSpec] = []
    ids: dict[str, int] = {}
    for line, row in read_rows(path):
        _check_columns(path, row, ("id",), NODE_COLUMNS, "node file")
        gpus = _whole(path, line, row, "gpus", 0)
        model = row.get("gpu_model", "")
        if gpus and not model:
            raise ScenarioError(f"{_at(path, line)}: gpu_model is required when gpus > 0")
        count = _whole(path, line, row, "count", 1)
        if len(out) + count > MAX_NODES:
            raise ScenarioError(
                f"{_at(path, line)}: more than {MAX_NODES:,} nodes in all; the simulator is "
                "sized for fleets up to about 250,000 GPUs"
            )
        for k in range(count):
            node_id = row["id"] if count == 1 else f"{row['id']}-{k}"
            if node_id:  # an empty id names no node: nothing to confuse it with
                _unique(path, line, "node", node_id, ids)
            out.append(
                NodeSpec(
                    id=node_id,
                    # Not given (a GPU-only node list): not limited, rather than 0, which
                    # made every task that asks for CPU or memory impossible.
                    cpu_milli=_whole(
                        path, line, row, "cpu_milli", MAX_NODE_CPU_MILLI, MAX_NODE_CPU_MILLI
                    ),
                    memory_mib=_whole(
                        path, line, row, "memory_mib", MAX_NODE_MEMORY_MIB, MAX_NODE_MEMORY_MIB
                    ),
                    gpu_count=gpus,
                    gpu_model=model if gpus else "",
                )
            )
    if not out:
        raise ScenarioError(f"{path}: the node file lists no nodes")
    return out


def _fmt(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def write_tasks(tasks: Sequence[TraceTask], path: Path) -> Path:
    """Write ``tasks`` in the generic CSV format (what :func:`read_tasks` reads back)."""
    rows: list[dict[str, Any]] = []
    for t in tasks:
        r = t.request
        rows.append(
            {
                "id": t.id,
                "submit_s": _fmt(t.submit_ms / 1000),
                "duration_s": _fmt(t.duration_ms / 1000),
                "nodes": t.nodes,
                "gpus": r.num_gpu,
                "gpu_milli": r.gpu_milli if r.shared else FULL,
                "cpu_milli": r.cpu_milli,
                "memory_mib": r.memory_mib,
                "models": "|".join(sorted(r.models)),
                "patience_s": "" if t.patience_ms is None else _fmt(t.patience_ms / 1000),
            }
        )
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(TASK_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path
