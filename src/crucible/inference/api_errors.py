"""Errors of the model server, answered in OpenAI's shape.

``{"error": {"message", "type", "param", "code"}}`` with the status codes the official
``openai`` client maps to its exception classes: 400 ``BadRequestError``, 404
``NotFoundError``, 422 ``UnprocessableEntityError``, 429 ``RateLimitError``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RANK_HINT", "OpenAIError", "bad_request", "not_found", "overloaded"]

# What a user can do about an adapter over the engine's rank limit (every engine says it).
RANK_HINT = (
    "(serve the model with a larger --max-lora-rank: `crucible model deploy NAME ... "
    "--max-lora-rank N`, or `python -m crucible.inference.serve ... --max-lora-rank N`; or "
    "train the adapter with a smaller --rank)"
)


class OpenAIError(Exception):
    """An error the model server answers with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        # The tokens the engine spent before it failed (charged like an answer's usage).
        self.usage = usage

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def bad_request(
    message: str, *, param: str | None = None, code: str = "invalid_value"
) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def not_found(
    message: str, *, param: str | None = None, code: str = "model_not_found"
) -> OpenAIError:
    return OpenAIError(404, message, param=param, code=code)


def overloaded(message: str, *, code: str = "rate_limit_exceeded") -> OpenAIError:
    return OpenAIError(429, message, type="rate_limit_error", code=code)
