"""Request bodies of the OpenAI-compatible API (the fields this server reads).

Unknown fields are accepted and ignored, as OpenAI's own clients send fields a server may
not know; known fields are checked and a bad value is a 400 naming the field. What no engine
here applies (tools, penalties, logit_bias) is refused when asked for, not ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crucible.protocol.models import ADAPTER_NAME_MAX, ADAPTER_NAME_PATTERN

__all__ = [
    "AdapterLoad",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ResponseFormat",
    "StreamOptions",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        # Only an assistant's message (one that called tools) may come without content:
        # OpenAI refuses any other, and answering it as an empty one hides a client's bug.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs its content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported by this model")
            parts.append(part["text"])
        return "".join(parts)


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _Sampling(_Body):
    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Read only to refuse what no engine here applies: an answer made without them, to a
    # request that relies on them, would be wrong without a word (0 and empty: fine).
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value:
            raise ValueError("this engine applies no penalties: leave it out, or 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("this engine applies no logit_bias: leave it out, or {}")
        return value

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    # No model served here calls tools: a request that offers some is refused rather than
    # answered in plain text as if it had not (an empty list is fine).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # The older form of tools (OpenAI's functions and function_call): refused the same way.
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError(
                "this model does not call tools: send the request without tools (the answer "
                "would ignore them)"
            )
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        # "none" and "auto" with no tools mean a plain answer; anything that asks for a call
        # ("required", a named function) cannot be met (OpenAI refuses it without tools).
        if value is not None and value not in ("none", "auto"):
            raise ValueError(
                "this model does not call tools: leave it out (or 'none'), as no tools are given"
            )
        return value


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    # Read only to refuse what no engine here does (0, empty: fine).
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=16)

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("this engine does not complete towards a suffix: leave it out")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        if value is not None and value not in (1, n):
            raise ValueError(
                f"best_of {value}: this engine returns every completion it makes and ranks "
                "none; ask for them with n instead (best_of may only equal n)"
            )
        return value


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class AdapterLoad(_Body):
    # The exchange registers adapters under the same rule (protocol/models.py).
    name: str = Field(min_length=1, max_length=ADAPTER_NAME_MAX, pattern=ADAPTER_NAME_PATTERN)
    path: str = Field(min_length=1)
