"""Version 2 of the deployed service."""

from __future__ import annotations

import time

import crucible

app = crucible.App("svc")


@app.function()
def version() -> str:
    return "v2"


@app.function(timeout=60)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "v2"


@app.function()
def greet(name: str, punctuation: str = "!") -> dict[str, str]:
    return {"greeting": f"hello {name}{punctuation}"}


@app.function()
def opaque() -> object:
    return object()  # not JSON
