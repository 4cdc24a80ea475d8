"""Container lifecycle hooks: ``@crucible.enter``.

A hook is a module-level function without parameters, in the module that defines the
function. The worker runs the module's hooks once per container, in definition order, after
it imported the module and before the first input:

- ``@crucible.enter()`` runs in every container (open a connection, load weights to the GPU);
- ``@crucible.enter(snapshot=True)`` runs in the image's zygote before it forks, so every
  container forked afterwards starts with its effect already in memory (read a file, build a
  lookup table). It must not start threads or touch a GPU: CUDA cannot survive a fork. On the
  ``process`` runtime (no zygote) it runs in each container like a plain hook.

A hook that raises makes the container fail every input with the hook's exception, as an
import error does.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, TypeVar

from crucible.errors import InvalidRequestError
from crucible.sdk._checks import check_bool

__all__ = ["enter", "enter_hooks"]

F = TypeVar("F", bound=Callable[[], Any])

_MARK = "__crucible_enter__"
_PARENS = "Did you forget parentheses? Write `@crucible.enter()`, not `@crucible.enter`."


def enter(
    _func: Any = None, *, snapshot: bool = False, snap: bool | None = None
) -> Callable[[F], F]:
    """Mark a module-level function to run once per container (see the module docstring).
    ``snap`` is Modal's name for ``snapshot``. On an ``@app.cls()`` class's method,
    ``snapshot=True`` runs it once per container, as a plain enter hook (no snapshot)."""
    if _func is not None:
        raise InvalidRequestError(_PARENS)
    if snap is not None:
        check_bool("@crucible.enter snap", snap)
        snapshot = snapshot or snap
    check_bool("@crucible.enter snapshot", snapshot)

    def decorate(f: F) -> F:
        if not callable(f) or "<locals>" in getattr(f, "__qualname__", ""):
            raise InvalidRequestError("@crucible.enter() decorates a module-level function")
        setattr(f, _MARK, {"snapshot": bool(snapshot)})
        return f

    return decorate


def enter_hooks(
    module: types.ModuleType, *, snapshot: bool | None = None
) -> list[Callable[[], Any]]:
    """The module's hooks in definition order; ``snapshot`` filters by kind (None: all)."""
    hooks: list[tuple[int, Callable[[], Any]]] = []
    for value in vars(module).values():
        mark = getattr(value, _MARK, None)
        if not isinstance(mark, dict) or getattr(value, "__module__", None) != module.__name__:
            continue
        if snapshot is not None and mark.get("snapshot") != snapshot:
            continue
        code = getattr(value, "__code__", None)
        hooks.append((code.co_firstlineno if code is not None else 0, value))
    return [h for _, h in sorted(hooks, key=lambda t: t[0])]
