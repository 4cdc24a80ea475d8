"""The function bench_coldstart.py starts cold, over and over, on an image with torch."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import crucible

app = crucible.App("coldstart")

TORCH = os.environ.get("CRUCIBLE_BENCH_TORCH", "torch==2.13.0")
torch_image = crucible.Image().pip_install(TORCH).preload("torch")


@app.function(image=torch_image, memory="2GiB", timeout=60)
def first_input() -> dict[str, Any]:
    """Runs as the first input of a fresh container: when, where, and whether torch was
    already imported (by the zygote) when it started."""
    return {
        "t": time.time(),
        "container": os.environ.get("CRUCIBLE_CONTAINER_ID", ""),
        "torch_preloaded": "torch" in sys.modules,
        "pid": os.getpid(),
    }
