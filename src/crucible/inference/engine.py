"""The engine contract: what every inference engine offers the model server.

An engine turns a prompt (token ids) into a stream of :class:`TokenStep` and may serve
LoRA adapters and embeddings. The server does everything else (chat templates through the
engine's tokenizer, stop strings, ``n``, JSON output, usage, SSE).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from crucible.inference.api_errors import not_found

__all__ = ["AdapterInfo", "Engine", "GenerationRequest", "SamplingParams", "TokenStep"]


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each token. ``temperature`` 0 is greedy; ``seed`` makes sampling
    reproducible; ``top_logprobs`` > 0 reports that many alternatives per token."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class TokenStep:
    """One generated token; ``finish_reason`` is set on the last one ("stop" at end of
    sequence, "length" at ``max_tokens`` or the model's context)."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    rank: int
    loaded: bool
    size_bytes: int


class Engine(abc.ABC):
    """Base of the engines. Subclasses implement tokenization and :meth:`generate`."""

    name: str = "engine"
    context_length: int = 2048
    #: token ids a prompt may hold are 0 .. vocab_size - 1 (None: not checked)
    vocab_size: int | None = None
    eos_token_ids: frozenset[int] = frozenset()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (a batching loop); called once when the app starts."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop background work; called once when the app stops."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template, ending with the
        assistant's turn prefix."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenStep]:
        """Stream the tokens of one sequence. Closing the iterator early cancels it."""

    # LoRA adapters: engines without them answer 404 / 400.
    def adapters(self) -> list[AdapterInfo]:
        return []

    def has_adapter(self, name: str) -> bool:
        return False

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        raise not_found(
            f"the {self.name} engine does not serve LoRA adapters",
            param="name",
            code="adapters_unsupported",
        )

    def unload_adapter(self, name: str) -> None:
        raise not_found(
            f"no adapter named {name!r} is loaded", param="name", code="adapter_not_found"
        )
