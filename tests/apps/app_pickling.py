"""Functions whose results, items or exceptions cannot be pickled (test_pickling_e2e.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crucible

app = crucible.App("pickling")


@app.function()
def returns_lock() -> dict[str, Any]:
    return {"ok": 1, "guard": threading.Lock()}


@app.function()
def yields_lock(n: int) -> Iterator[Any]:
    yield from range(n)
    yield threading.Lock()


class LockedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@app.function()
def raises_unpicklable() -> None:
    raise LockedError("the disk is full")


@app.function()
def returns_container_only_class(workdir: str) -> object:
    """An instance of a class from a module that exists only in the container."""
    import importlib
    import sys

    Path(workdir, "only_in_container.py").write_text("class Thing:\n    pass\n")
    sys.path.insert(0, workdir)
    return importlib.import_module("only_in_container").Thing()


@app.function()
def echo(x: Any, *, tag: str = "") -> Any:
    return x
