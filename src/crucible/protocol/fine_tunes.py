"""Fine-tuning jobs: a LoRA adapter trained on a model's base weights by a job on the market,
registered as the model's adapter when it succeeds (docs/inference.md)."""

from __future__ import annotations

from pydantic import Field

from crucible.protocol.common import Wire, WireInt
from crucible.protocol.models import AdapterName

__all__ = ["FINE_TUNE_METHODS", "FineTuneCreate", "FineTuneInfo", "FineTuneStep"]

FINE_TUNE_METHODS = ("lora",)
_NAME = r"^[A-Za-z0-9_.\-]+$"


class FineTuneCreate(Wire):
    """Record the fine-tune that the call ``call_id`` runs (``crucible fine-tune create``
    deploys the trainer app, uploads the data to the model's volume and spawns the call
    first). The adapter is registered under ``adapter`` when the call succeeds."""

    model: str = Field(min_length=1, max_length=128, pattern=_NAME)
    adapter: AdapterName
    call_id: str = Field(min_length=1, max_length=32)
    method: str = Field(default="lora", pattern=r"^lora$")
    rank: int = Field(default=16, ge=1, le=1024)
    epochs: int = Field(default=3, ge=1, le=1000)
    lr: float = Field(default=2e-4, gt=0, le=1.0)
    examples: int = Field(default=0, ge=0, le=2**53)
    data: str = Field(default="", max_length=1024)  # the training file, for people


class FineTuneStep(Wire):
    step: WireInt
    epoch: WireInt
    loss: float


class FineTuneInfo(Wire):
    """A fine-tune job. ``state`` is its call's (queued, running, succeeded, failed,
    cancelled, timed_out); ``steps`` is the loss per optimizer step read from its log."""

    id: str
    model: str
    adapter: str
    call_id: str
    app_id: str
    state: str
    method: str
    rank: WireInt
    epochs: WireInt
    lr: float
    examples: WireInt
    data: str
    created_ms: WireInt
    finished_ms: WireInt | None = None
    registered: bool = False  # the adapter is registered on the model
    checkpoints: list[str] = Field(default_factory=list)
    steps: list[FineTuneStep] = Field(default_factory=list)
    error: str | None = None
