"""``@crucible.concurrent`` (one container runs several inputs at once) and
``@crucible.batched`` (one call of the function handles a batch of inputs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from crucible.errors import InvalidRequestError
from crucible.sdk._checks import check_int

__all__ = ["BATCHING_ATTR", "CONCURRENCY_ATTR", "batched", "concurrent"]

CONCURRENCY_ATTR = "__crucible_concurrent__"
BATCHING_ATTR = "__crucible_batched__"
F = TypeVar("F", bound=Callable[..., Any])


def _no_parentheses(name: str, example: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Did you forget parentheses? Write `@crucible.{name}({example})`, not `@crucible.{name}`."
    )


def concurrent(
    _func: Any = None, /, *, max_inputs: int | None = None, target_inputs: int | None = None
) -> Callable[[F], F]:
    """Let each container run up to ``max_inputs`` inputs at once (threads for a plain
    function, tasks on one event loop per thread for an ``async def``). The autoscaler sizes
    the pool for ``target_inputs`` per container (default ``max_inputs``), so bursts can go
    up to ``max_inputs`` before new containers are ready. Put it *below* ``@app.function``::

        @app.function(gpu="H100")
        @crucible.concurrent(max_inputs=32)
        def generate(prompt: str) -> str: ...

    Timeouts of concurrent inputs are enforced by the control plane's backstop (the
    container is stopped past ``timeout`` plus a grace), not inside the function.
    """
    if _func is not None:
        raise _no_parentheses("concurrent", "max_inputs=8")
    max_inputs = check_int("@crucible.concurrent max_inputs", max_inputs, 1, 1000)
    assert max_inputs is not None
    check_int("@crucible.concurrent target_inputs", target_inputs, 1, 1000, optional=True)
    if target_inputs is not None and target_inputs > max_inputs:
        raise InvalidRequestError(f"target_inputs={target_inputs} is above max_inputs={max_inputs}")

    def decorate(f: F) -> F:
        from crucible.sdk._functions import Function

        if isinstance(f, Function):
            raise InvalidRequestError(
                "put @crucible.concurrent(...) below @app.function(...), next to the def"
            )
        if hasattr(f, BATCHING_ATTR):  # in either order
            raise InvalidRequestError("a function is either @crucible.batched or @concurrent")
        setattr(f, CONCURRENCY_ATTR, (max_inputs, target_inputs))
        return f

    return decorate


def batched(
    _func: Any = None, /, *, max_batch_size: int | None = None, wait_ms: int | None = None
) -> Callable[[F], F]:
    """Dynamic batching: the container gathers inputs (up to ``max_batch_size``, waiting at
    most ``wait_ms`` after the first for more) and calls the function once with a *list* per
    parameter; it must return a list with one result per input, in order. Each input is
    still its own call to the caller (``.remote(x)`` returns one result). Put it below
    ``@app.function``::

        @app.function(gpu="L4")
        @crucible.batched(max_batch_size=32, wait_ms=20)
        def embed(texts: list[str]) -> list[list[float]]: ...

    An exception fails every input of the batch.
    """
    if _func is not None:
        raise _no_parentheses("batched", "max_batch_size=32, wait_ms=20")
    check_int("@crucible.batched max_batch_size", max_batch_size, 1, 1000)
    check_int("@crucible.batched wait_ms", wait_ms, 0, 10_000)

    def decorate(f: F) -> F:
        from crucible.sdk._functions import Function

        if isinstance(f, Function):
            raise InvalidRequestError(
                "put @crucible.batched(...) below @app.function(...), next to the def"
            )
        if hasattr(f, CONCURRENCY_ATTR):
            raise InvalidRequestError("a function is either @crucible.batched or @concurrent")
        setattr(f, BATCHING_ATTR, (max_batch_size, wait_ms))
        return f

    return decorate
