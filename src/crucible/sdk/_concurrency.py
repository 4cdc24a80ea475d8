"""``@crucible.concurrent``: one container handles several inputs at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from crucible.errors import InvalidRequestError

__all__ = ["CONCURRENCY_ATTR", "concurrent"]

CONCURRENCY_ATTR = "__crucible_concurrent__"
F = TypeVar("F", bound=Callable[..., Any])


def concurrent(*, max_inputs: int, target_inputs: int | None = None) -> Callable[[F], F]:
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
    for label, value in (("max_inputs", max_inputs), ("target_inputs", target_inputs)):
        if value is None and label == "target_inputs":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidRequestError(f"{label}={value!r} must be an int in [1, 1000]")
    if target_inputs is not None and target_inputs > max_inputs:
        raise InvalidRequestError(f"target_inputs={target_inputs} is above max_inputs={max_inputs}")

    def decorate(f: F) -> F:
        from crucible.sdk._functions import Function

        if isinstance(f, Function):
            raise InvalidRequestError(
                "put @crucible.concurrent(...) below @app.function(...), next to the def"
            )
        setattr(f, CONCURRENCY_ATTR, (max_inputs, target_inputs))
        return f

    return decorate
