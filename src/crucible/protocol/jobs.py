"""The job API: a deployed function called from any language with JSON."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from crucible.protocol.common import ErrorInfo, JsonValue, Wire, WireInt

__all__ = ["JOB_STATES", "JobInput", "JobStatus"]

# queued -> running -> succeeded | failed | cancelled | timed_out
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


class JobInput(Wire):
    """``input`` is passed as the function's one argument; or give ``args`` and ``kwargs``."""

    input: JsonValue = None
    args: list[JsonValue] | None = None
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    # The same key submits once (a retried request returns the first job).
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_way(self) -> JobInput:
        if self.input is not None and (self.args is not None or self.kwargs):
            raise ValueError("give either input, or args and kwargs, not both")
        return self

    def call_args(self) -> dict[str, Any]:
        if self.args is None and not self.kwargs:
            return {"args": [self.input] if self.input is not None else [], "kwargs": {}}
        return {"args": self.args or [], "kwargs": self.kwargs}


class JobStatus(Wire):
    id: str
    status: str  # one of JOB_STATES
    output: Any = None  # the function's JSON result, once succeeded
    error: ErrorInfo | None = None
    created_ms: WireInt
    started_ms: WireInt | None = None
    finished_ms: WireInt | None = None
    exec_ms: WireInt | None = None
    cost_micros: WireInt | None = None
