"""The pure core that bounds a model request's charge (core/token_bounds): what each kind of
request may be charged for, what it holds, and what it is refused."""

from __future__ import annotations

from typing import Any

import pytest

from crucible.core.token_bounds import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    BoundRefusal,
    Endpoint,
    RequestBounds,
    request_bounds,
)
from crucible.core.token_pricing import TokenPrices, TokenUsage

HI = [{"role": "user", "content": "hi"}]


def _bounds(endpoint: Endpoint, body: dict[str, Any], context: int = 100) -> RequestBounds:
    got = request_bounds(endpoint, body, context)
    assert isinstance(got, RequestBounds), got
    return got


def _refusal(endpoint: Endpoint, body: dict[str, Any], context: int = 100) -> BoundRefusal:
    got = request_bounds(endpoint, body, context)
    assert isinstance(got, BoundRefusal), got
    return got


def test_each_request_is_bounded_by_what_it_could_produce() -> None:
    # chat without max_tokens: the context less a one-token prompt, per sequence
    assert _bounds("chat", {"messages": HI}) == RequestBounds(99, 99)
    assert _bounds("chat", {"messages": HI, "n": 3}) == RequestBounds(99, 297)
    assert _bounds("chat", {"messages": HI, "max_completion_tokens": 7, "n": 2}) == (
        RequestBounds(99, 14)
    )
    # completions: token-id prompts are counted exactly; OpenAI's default of 16 applies only
    # when max_tokens is absent (an explicit null asks for the rest of the context)
    prompt = {"prompt": [[1, 2, 3], "text"]}
    assert _bounds("completions", prompt) == RequestBounds(
        3 + 99, 2 * COMPLETIONS_DEFAULT_MAX_TOKENS
    )
    assert _bounds("completions", {**prompt, "max_tokens": None}) == RequestBounds(102, 97 + 99)
    assert _bounds("completions", {"prompt": "x", "max_tokens": 5, "best_of": 4, "n": 2}) == (
        RequestBounds(99, 20)
    )
    # Both limits given: the larger bounds the charge, whichever the engine honours
    # (/completions knows only max_tokens: 1 and 400 generated up to 400, charged 1).
    both = {"max_completion_tokens": 1, "max_tokens": 40}
    assert _bounds("completions", {"prompt": "x", **both}) == RequestBounds(99, 40)
    assert _bounds("chat", {"messages": HI, **both}) == RequestBounds(99, 40)
    assert _bounds("completions", {"prompt": "x", "max_completion_tokens": 1}) == (
        RequestBounds(99, COMPLETIONS_DEFAULT_MAX_TOKENS)
    )
    too_many = _refusal("chat", {"messages": HI, "max_completion_tokens": 5, "max_tokens": 200})
    assert too_many.param == "max_tokens" and "ask for at most 99" in too_many.message
    wrong = _refusal("chat", {"messages": HI, "max_tokens": "ten"})
    assert wrong.message == "'max_tokens' must be an integer of at least 1", wrong
    assert _bounds("embeddings", {"input": ["a", "b"]}) == RequestBounds(198, 0)
    assert _bounds("embeddings", {"input": [1, 2, 3]}) == RequestBounds(3, 0)


def test_usage_is_capped_and_the_hold_covers_any_charge() -> None:
    bounds = RequestBounds(10, 20)
    assert bounds.cap(TokenUsage(5, 500)) == TokenUsage(5, 20)
    assert bounds.cap(TokenUsage(50, 1)) == TokenUsage(10, 1)
    # 10 x 0.3 + 20 x 0.7 micro-dollars = 17, rounded up from any fraction
    assert bounds.max_charge_micros(TokenPrices(300_000, 700_000)) == 17
    assert bounds.max_charge_micros(TokenPrices(1, 0)) == 1
    assert bounds.max_charge_micros(TokenPrices(0, 0)) == 0


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "code"),
    [
        ("chat", {"messages": HI, "max_tokens": 100}, "max_tokens", "context_length_exceeded"),
        ("completions", {"prompt": list(range(100))}, "prompt", "context_length_exceeded"),
        (
            "completions",
            {"prompt": list(range(90)), "max_tokens": 11},
            "max_tokens",
            "context_length_exceeded",
        ),
        ("embeddings", {"input": [list(range(100))]}, "input", "context_length_exceeded"),
        ("chat", {"messages": []}, "messages", "invalid_value"),
        ("chat", {"messages": HI, "n": 129}, "n", "invalid_value"),
        ("chat", {"messages": HI, "n": True}, "n", "invalid_value"),
        ("chat", {"messages": HI, "max_tokens": "5"}, "max_tokens", "invalid_value"),
        ("chat", {"messages": HI, "stop": ["a"] * 5}, "stop", "invalid_value"),
        ("chat", {"messages": HI, "stop": "s" * 1025}, "stop", "invalid_value"),
        ("chat", {"messages": HI, "stop": [1]}, "stop", "invalid_value"),
        ("chat", {"messages": HI, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ("completions", {"prompt": "x", "logprobs": -1}, "logprobs", "invalid_value"),
        ("completions", {"prompt": "x", "best_of": 500}, "best_of", "invalid_value"),
        ("completions", {"prompt": {"a": 1}}, "prompt", "invalid_value"),
        ("embeddings", {"input": ["a"] * 2049}, "input", "invalid_value"),
        ("embeddings", {}, "input", "invalid_value"),
    ],
)
def test_requests_no_engine_should_run_are_refused(
    endpoint: Endpoint, body: dict[str, Any], param: str, code: str
) -> None:
    refusal = _refusal(endpoint, body)
    assert (refusal.param, refusal.code) == (param, code), refusal
    assert refusal.message


def test_a_prompt_of_the_wrong_type_is_named_as_such() -> None:
    """A missing or empty prompt is "required"; one of a type no engine reads (an object, a
    number) says what it must be and what it was, rather than that it is missing."""
    assert "is required" in _refusal("embeddings", {"input": []}).message
    assert "is required" in _refusal("completions", {}).message
    wrong = _refusal("embeddings", {"input": {"a": 1}})
    assert wrong.param == "input" and "must be a string" in wrong.message
    assert "got dict" in wrong.message and "is required" not in wrong.message
    assert "got int" in _refusal("completions", {"prompt": 5}).message
