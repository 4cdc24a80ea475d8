"""The most a model request may cost, read from its body before any engine work (the pure
core; no I/O, no clock).

A model's owner runs its engine, so the usage the engine reports is the owner's word. What a
caller can be charged is therefore bounded by what its request *could* produce, decided here
from the request alone and the model's context length (its window in tokens):

- input tokens: at most ``context_length - 1`` per prompt (an engine refuses a prompt that
  leaves no room to answer), or exactly the length of a prompt given as token ids;
- output tokens: per sequence, ``max_tokens`` (or ``max_completion_tokens``) when set, else
  what the context leaves after the prompt (``/completions`` without the field defaults to
  16, as OpenAI's does); times the sequences generated per prompt (``n``, or ``best_of``
  when larger);
- embeddings produce no output tokens.

:func:`request_bounds` also refuses what no engine should be asked: ``n`` over
:data:`MAX_N`, ``max_tokens`` that cannot fit the context, too many or too long stop
sequences, ``logprobs``/``top_logprobs`` out of range, too many embedding inputs, a prompt of
token ids longer than the context. Each refusal names the field (``param``) and an
OpenAI-style ``code``, for a 400 in OpenAI's shape. A text prompt's tokens are counted only by
the engine (the exchange has no tokenizer); every engine refuses one over the context before it
generates anything, and its bytes are bounded by the operator's
``openai_max_request_bytes``.

The charge is settled at the engine's reported usage, capped by :meth:`RequestBounds.cap`;
where credits are required, :meth:`RequestBounds.max_charge_micros` is held before the request
runs, so that no request can take its caller below zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from crucible.core.token_pricing import UNITS_PER_MICRO, TokenPrices, TokenUsage

__all__ = [
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "MAX_EMBEDDING_INPUTS",
    "MAX_LOGPROBS",
    "MAX_N",
    "MAX_STOPS",
    "MAX_STOP_CHARS",
    "BoundRefusal",
    "Endpoint",
    "RequestBounds",
    "request_bounds",
]

Endpoint = Literal["chat", "completions", "embeddings"]

MAX_N = 128  # OpenAI's own limit on n (and best_of below it)
MAX_STOPS = 4  # OpenAI: "up to 4 sequences"
MAX_STOP_CHARS = 1024  # a stop sequence is a few characters; this is generous
MAX_LOGPROBS = 20  # top_logprobs 0..20 (OpenAI); the engines return at most this many
MAX_EMBEDDING_INPUTS = 2048  # OpenAI: "at most 2048 inputs" per embeddings request
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /completions


@dataclass(frozen=True, slots=True)
class BoundRefusal:
    """Why a request is refused before it runs: a 400 in OpenAI's shape."""

    message: str
    param: str
    code: str = "invalid_value"


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """The most input and output tokens a request may be charged for."""

    max_input_tokens: int
    max_output_tokens: int

    def cap(self, reported: TokenUsage) -> TokenUsage:
        """The engine's reported usage, never above these bounds."""
        return TokenUsage(
            min(max(reported.input_tokens, 0), self.max_input_tokens),
            min(max(reported.output_tokens, 0), self.max_output_tokens),
        )

    def max_charge_micros(self, prices: TokenPrices) -> int:
        """The most the request can be charged, in micro-dollars: its value at the bounds,
        rounded up (the running-total rounding charges a request at most this)."""
        units = TokenUsage(self.max_input_tokens, self.max_output_tokens).value_units(prices)
        return -(-units // UNITS_PER_MICRO)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(body: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not _int(value) or not low <= value <= high:
        limit = f"from {low} to {high}" if high < 1 << 53 else f"of at least {low}"
        raise _Refused(BoundRefusal(f"'{key}' must be an integer {limit}", key))
    return int(value)


class _Refused(Exception):
    def __init__(self, refusal: BoundRefusal) -> None:
        self.refusal = refusal


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(_int(t) for t in value)


def _prompts(endpoint: Endpoint, body: Mapping[str, Any]) -> tuple[str, list[int | None]]:
    """The field that holds the prompt(s), and each prompt's exact token count where it is
    given as token ids (None: text, counted by the engine)."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Refused(BoundRefusal("'messages' must be a non-empty list", "messages"))
        return "messages", [None]
    param = "prompt" if endpoint == "completions" else "input"
    value = body.get(param)
    if isinstance(value, str):
        return param, [None]
    if _token_ids(value) and value:
        return param, [len(value)]
    if isinstance(value, list) and value:
        if endpoint == "embeddings" and len(value) > MAX_EMBEDDING_INPUTS:
            raise _Refused(
                BoundRefusal(
                    f"'input' has {len(value)} items; at most {MAX_EMBEDDING_INPUTS} per "
                    "request (send the rest in further requests)",
                    param,
                )
            )
        counts: list[int | None] = []
        for item in value:
            if isinstance(item, str):
                counts.append(None)
            elif _token_ids(item) and item:
                counts.append(len(item))
            else:
                raise _Refused(
                    BoundRefusal(
                        f"'{param}' must be a string, a list of strings, a list of token ids "
                        "or a list of such lists",
                        param,
                    )
                )
        return param, counts
    if value is None or value in ("", []):
        raise _Refused(BoundRefusal(f"'{param}' is required: the text to {_verb(endpoint)}", param))
    raise _Refused(
        BoundRefusal(
            f"'{param}' must be a string, a list of strings, a list of token ids or a list of "
            f"such lists (got {type(value).__name__}): the text to {_verb(endpoint)}",
            param,
        )
    )


def _verb(endpoint: Endpoint) -> str:
    return "complete" if endpoint == "completions" else "embed"


def _check_stop(body: Mapping[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None:
        return
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _Refused(BoundRefusal("'stop' must be a string or a list of strings", "stop"))
    if len(stops) > MAX_STOPS:
        raise _Refused(
            BoundRefusal(f"'stop' has {len(stops)} sequences; at most {MAX_STOPS}", "stop")
        )
    longest = max((len(s) for s in stops), default=0)
    if longest > MAX_STOP_CHARS:
        raise _Refused(
            BoundRefusal(
                f"a stop sequence has {longest} characters; at most {MAX_STOP_CHARS}", "stop"
            )
        )


def _check_logprobs(endpoint: Endpoint, body: Mapping[str, Any]) -> None:
    if endpoint == "chat":
        if body.get("logprobs") is not None and not isinstance(body.get("logprobs"), bool):
            raise _Refused(BoundRefusal("'logprobs' must be true or false", "logprobs"))
        _count(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
    else:
        _count(body, "logprobs", 0, 0, MAX_LOGPROBS)


def _exceeded(message: str, param: str) -> _Refused:
    return _Refused(BoundRefusal(message, param, "context_length_exceeded"))


def request_bounds(
    endpoint: Endpoint, body: Mapping[str, Any], context_length: int
) -> RequestBounds | BoundRefusal:
    """Check the request's limits against a model whose context is ``context_length``
    tokens, and give the most it may be charged for (module docstring)."""
    try:
        return _bounds(endpoint, body, max(context_length, 2))
    except _Refused as refused:
        return refused.refusal


def _bounds(endpoint: Endpoint, body: Mapping[str, Any], context: int) -> RequestBounds:
    param, prompts = _prompts(endpoint, body)
    for tokens in prompts:
        if tokens is not None and tokens >= context:
            raise _exceeded(
                f"this model's maximum context length is {context} tokens; the prompt has "
                f"{tokens} tokens (leaving no room to answer): shorten it",
                param,
            )
    max_input = sum(context - 1 if t is None else t for t in prompts)
    if endpoint == "embeddings":
        return RequestBounds(max_input, 0)
    n = _count(body, "n", 1, 1, MAX_N)
    best_of = _count(body, "best_of", 1, 1, MAX_N) if endpoint == "completions" else 1
    _check_stop(body)
    _check_logprobs(endpoint, body)
    # Both limits are read, and the larger bounds the answer: engines differ in which one
    # they honour (OpenAI's chat prefers max_completion_tokens; /completions knows only
    # max_tokens, and a caller sending both must not be charged by the one it ignores).
    given = {
        key: _count(body, key, 0, 1, 1 << 62)
        for key in ("max_completion_tokens", "max_tokens")
        if body.get(key) is not None
    }
    shortest = min(1 if t is None else t for t in prompts)
    for key, asked in given.items():
        if asked > context - shortest:
            raise _exceeded(
                f"this model's maximum context length is {context} tokens; you requested "
                f"{asked} output tokens ('{key}') with a prompt of at least {shortest} token"
                f"{'s' if shortest != 1 else ''}: ask for at most {context - shortest}",
                key,
            )
    if endpoint == "completions" and "max_tokens" not in body:
        given["max_tokens"] = COMPLETIONS_DEFAULT_MAX_TOKENS  # what the engine then makes
    sequences = max(n, best_of)
    if given:
        per_prompt = [min(max(given.values()), context - shortest)] * len(prompts)
    else:
        per_prompt = [context - (1 if t is None else t) for t in prompts]
    return RequestBounds(max_input, sequences * sum(per_prompt))
