"""Version 1 of a deployed service (the deployment tests redeploy version 2 over it)."""

from __future__ import annotations

import time

import crucible

app = crucible.App("svc")


@app.function()
def version() -> str:
    return "v1"


@app.function(timeout=60)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "v1"
