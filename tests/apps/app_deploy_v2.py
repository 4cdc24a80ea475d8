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
