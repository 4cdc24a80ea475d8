"""A function whose container dies while loading it (a stand-in for a segfault on import)."""

from __future__ import annotations

import os

import crucible

if os.environ.get("CRUCIBLE_CONTAINER_ID"):  # inside a container only
    os._exit(3)

app = crucible.App("crashy")


@app.function()
def never() -> None:
    return None
