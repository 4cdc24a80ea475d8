"""Stop hooks: code a function registers to run when its container is told to stop (a
preemption, a scale-down, the app stopping), e.g. to write a checkpoint.

The worker calls every hook once, in registration order, when SIGTERM arrives; the
container then has its grace period (30 s by default for a preemption) before SIGKILL. A
hook runs in the worker's main thread, between two bytecodes of whatever the function was
doing, so keep it short and do not rely on locks the function may hold.

Hooks registered at import time (module level) last for the container's life; a hook
registered while the function handles an input is dropped when that input ends, so
registering inside the function body does not pile hooks up call after call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from crucible.errors import InvalidRequestError

__all__ = ["drop_stop_hooks_after", "on_stop", "run_stop_hooks", "stop_hooks_mark"]

log = logging.getLogger("crucible.worker")

F = TypeVar("F", bound=Callable[[], object])
_hooks: list[Callable[[], object]] = []


def on_stop(hook: F) -> F:
    """Register ``hook`` (no arguments) to run when the container is asked to stop. Usable
    as a decorator; returns the hook unchanged. Outside a container it is never called."""
    if not callable(hook):
        raise InvalidRequestError(
            f"crucible.on_stop() hook must be a function with no arguments, got {hook!r}"[:200]
        )
    _hooks.append(hook)
    return hook


def run_stop_hooks() -> int:
    """Run (and forget) every registered hook; a hook that raises is logged and the others
    still run. Returns how many ran."""
    hooks = list(_hooks)
    _hooks.clear()
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.exception("stop hook %r raised", hook)
    return len(hooks)


def stop_hooks_mark() -> int:
    """Where the hook list ends now (the worker takes it before each input)."""
    return len(_hooks)


def drop_stop_hooks_after(mark: int) -> None:
    """Forget hooks registered since ``mark`` (those of the input that just ended)."""
    del _hooks[mark:]
