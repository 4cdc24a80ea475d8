"""Model deployments: a deployment whose web function speaks the OpenAI protocol, served by
the exchange at ``{server}/openai/v1`` and billed per token (docs/inference.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from crucible.protocol.common import Named, Wire, WireInt

__all__ = [
    "ENGINES",
    "AdapterCreate",
    "AdapterInfo",
    "ModelCreate",
    "ModelInfo",
    "ModelUsage",
    "ModelUsageLine",
]

ENGINES = ("vllm", "transformers", "llama-cpp")
_NAME = r"^[A-Za-z0-9_.\-]+$"


# Dollars per million tokens, in micro-dollars ($1,000 at most).
TokenPrice = Annotated[int, Field(ge=0, le=1_000_000_000)]


class ModelCreate(Named):
    """Register (or update) the model ``name``: the deployment ``deployment`` whose web
    function ``function`` serves it. ``crucible model deploy`` deploys the engine app and then
    registers it; a deployment of your own that speaks the OpenAI protocol may be registered
    the same way (engine ``custom``). Prices are micro-dollars per million tokens; none (or
    both zero) bills callers nothing per token (the owner pays container time as always)."""

    deployment: str = Field(min_length=1, max_length=128, pattern=_NAME)
    function: str = Field(default="serve", min_length=1, max_length=128, pattern=_NAME)
    engine: str = Field(default="custom", min_length=1, max_length=32, pattern=_NAME)
    weights: str = Field(default="", max_length=1024)
    public: bool = False
    price_input_micros: TokenPrice | None = None
    price_output_micros: TokenPrice | None = None
    # The engine's window in tokens (2048: the engines' default --max-model-len). It bounds
    # every request: max_tokens past it is refused, and a caller is never charged for more
    # tokens than a request of this window could produce.
    context_length: int = Field(default=2048, ge=16, le=16_777_216)


class AdapterCreate(Named):
    """A LoRA adapter (PEFT format) at ``path`` as the model's containers see it (e.g. under
    the model's volume mount); ``source`` says where it came from, for people."""

    path: str = Field(min_length=1, max_length=1024)
    source: str = Field(default="", max_length=1024)


class AdapterInfo(Wire):
    name: str
    path: str
    source: str
    created_ms: WireInt


class ModelInfo(Wire):
    id: str
    name: str
    owner: str  # the owning account's name
    deployment: str
    function: str
    engine: str
    weights: str
    public: bool
    state: str  # the deployment's: running | stopped
    price_input_micros: WireInt | None
    price_output_micros: WireInt | None
    created_ms: WireInt
    context_length: WireInt = 2048
    adapters: list[AdapterInfo] = Field(default_factory=list)


class ModelUsageLine(Wire):
    """Tokens one caller used on one UTC day, on the base model (``adapter`` "") or an
    adapter; ``cost_micros`` is what the caller was charged per token."""

    day: str  # YYYY-MM-DD, UTC
    caller: str  # account name
    adapter: str
    requests: WireInt
    input_tokens: WireInt
    output_tokens: WireInt
    cost_micros: WireInt


class ModelUsage(Wire):
    model: str
    lines: list[ModelUsageLine]
    requests: WireInt
    input_tokens: WireInt
    output_tokens: WireInt
    cost_micros: WireInt  # charged to callers per token
    container_cost_micros: WireInt  # the deployment's metered container time (the owner's)
