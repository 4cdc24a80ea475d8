"""Model deployments: a deployment whose web function speaks the OpenAI protocol, served by
the exchange at ``{server}/openai/v1`` and billed per token (docs/inference.md)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from crucible.errors import InvalidRequestError
from crucible.protocol.common import Named, Wire, WireInt

__all__ = [
    "ADAPTER_NAME_MAX",
    "ADAPTER_NAME_PATTERN",
    "ADAPTER_NAME_RULE",
    "ENGINES",
    "AdapterCreate",
    "AdapterInfo",
    "AdapterName",
    "ModelCreate",
    "ModelInfo",
    "ModelUsage",
    "ModelUsageLine",
    "check_adapter_name",
]

ENGINES = ("vllm", "transformers", "llama-cpp")
_NAME = r"^[A-Za-z0-9_.\-]+$"

# An adapter's name: the rule of every engine's POST /v1/adapters (inference/schemas.py
# AdapterLoad uses these), so a name the exchange registers is one the engine loads. It is
# also the body's ``model`` for the engine, and never contains ":" (NAME:ADAPTER).
ADAPTER_NAME_MAX = 64
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ADAPTER_NAME_RULE = (
    f"1-{ADAPTER_NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit"
)
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)


def _adapter_name(name: str) -> str:
    if not _ADAPTER_NAME.fullmatch(name):
        raise ValueError(f"an adapter's name is {ADAPTER_NAME_RULE}; {name[:80]!r} is not")
    return name


AdapterName = Annotated[
    str, Field(min_length=1, max_length=ADAPTER_NAME_MAX), AfterValidator(_adapter_name)
]


def check_adapter_name(label: str, value: str) -> str:
    """``value`` as an adapter's name, or InvalidRequestError naming the rule (the CLI's
    check, before anything is uploaded or trained)."""
    if len(value) > ADAPTER_NAME_MAX or not _ADAPTER_NAME.fullmatch(value):
        shown = repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
        raise InvalidRequestError(
            f"{label} must be {ADAPTER_NAME_RULE} (the engines' rule), got {shown}"
        )
    return value


def check_not_base(model: str, adapter: str) -> None:
    """An adapter may not be called as its model: engines are sent the adapter's bare name
    (as vLLM serves them), and took ``smol:smol`` for the base model ``smol``."""
    if adapter == model:
        raise InvalidRequestError(
            f"an adapter of model {model!r} cannot be called {adapter!r} too (the name would "
            f"also mean the base model); pick another name, e.g. {model}-tuned"
        )


# Dollars per million tokens, in micro-dollars ($1,000 at most).
TokenPrice = Annotated[int, Field(ge=0, le=1_000_000_000)]


class ModelCreate(Named):
    """Register (or update) the model ``name``: the deployment ``deployment`` whose web
    function ``function`` serves it. ``crucible model deploy`` deploys the engine app and then
    registers it; a deployment of your own that speaks the OpenAI protocol may be registered
    the same way (engine ``custom``). Prices are micro-dollars per million tokens; none (or
    both zero) bills callers nothing per token (the owner pays container time as always).
    Updating a model, ``public`` and the prices left out of the request keep their current
    values (send them, ``null`` included, to change them)."""

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
    # The highest LoRA rank its engine serves (64: the engines' default --max-lora-rank):
    # adapters and fine-tunes of a higher rank are refused up front.
    max_lora_rank: int = Field(default=64, ge=1, le=1024)


def _header_safe_path(path: str) -> str:
    """An adapter's path travels to its engine in a request header: printable ASCII only
    (a path in another script reached the container as '??' and never loaded)."""
    if not path.isascii() or not path.isprintable():
        raise ValueError(
            f"an adapter's path must be printable ASCII (it is sent to the engine in a "
            f"header), got {path[:80]!r}: rename the directory"
        )
    return path


class AdapterCreate(Wire):
    """A LoRA adapter (PEFT format) at ``path`` as the model's containers see it (e.g. under
    the model's volume mount); ``source`` says where it came from, for people. ``name``
    follows the engines' rule (:data:`ADAPTER_NAME_RULE`)."""

    name: AdapterName
    path: Annotated[str, AfterValidator(_header_safe_path)] = Field(min_length=1, max_length=1024)
    source: str = Field(default="", max_length=1024)
    # Its LoRA rank, when the client read it (adapter_config.json's ``r``): one over the
    # model's ``max_lora_rank`` is refused instead of failing every request that names it.
    rank: int | None = Field(default=None, ge=1, le=65_536)


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
    max_lora_rank: WireInt = 64
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
