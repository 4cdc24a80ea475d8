"""A function that keeps a warm container with no work (the autoscaler tests)."""

from __future__ import annotations

import os

import crucible

app = crucible.App("scaling")


@app.function(min_containers=1, scaledown_window=1)
def warm() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]
