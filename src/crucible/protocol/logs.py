"""Logs: what functions print, as their workers send it and as builders read it."""

from __future__ import annotations

from pydantic import Field

from crucible.protocol.common import MAX_WIRE_INT, Wire, WireInt

__all__ = ["LogBatch", "LogLine", "LogPage", "LogSent"]


class LogSent(Wire):
    ts_ms: int = Field(ge=0, le=MAX_WIRE_INT)
    stream: str = Field(pattern=r"^(stdout|stderr)$")
    call_id: str | None = Field(default=None, max_length=32)
    line: str = Field(max_length=8192)


class LogBatch(Wire):
    lines: list[LogSent] = Field(max_length=1000)


class LogLine(LogSent):
    id: WireInt  # increasing: read on from the last one seen
    container_id: str
    function_id: str


class LogPage(Wire):
    lines: list[LogLine]
    next_after: WireInt  # pass as ``after`` to read on (``--follow``)
    # Log lines are kept this many days (CRUCIBLE_RETENTION_LOGS_DAYS): set only when the app
    # is older than that, so some of its lines may have been pruned (left out of the JSON
    # otherwise, as older clients expect).
    kept_days: float | None = Field(default=None, gt=0, exclude_if=lambda v: v is None)
