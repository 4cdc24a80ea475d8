"""What a model server is started with: the engine, the weights and the engine's limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ENGINES = ("transformers", "llama-cpp", "vllm")

__all__ = ["ENGINES", "EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    """One model server's configuration.

    ``weights`` is a directory (transformers, vllm) or a ``.gguf`` file (llama-cpp); nothing
    is downloaded from a hub. ``model_name`` is the id clients pass as ``model`` (default: the
    weights' file or directory name). ``adapters`` maps adapter names to PEFT directories (or,
    for llama-cpp, GGUF LoRA files) that are registered at start. ``embeddings`` is a
    sentence-embedding model directory served at ``/v1/embeddings`` (absent: that route
    answers 404).
    """

    weights: Path
    engine: str = "transformers"
    model_name: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = 8
    max_model_len: int = 2048
    max_lora_rank: int = 64
    lora_budget_bytes: int = 256 * 1024 * 1024
    max_queued: int = 256
    adapters: dict[str, Path] = field(default_factory=dict)
    embeddings: Path | None = None
    json_attempts: int = 3

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_lora_rank < 1:
            raise ValueError("max_lora_rank must be at least 1")

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        name = self.weights.name
        return name[: -len(".gguf")] if name.endswith(".gguf") else name
