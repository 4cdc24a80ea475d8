"""Functions the market's end-to-end tests run: a cheap interruptible job that checkpoints
when preempted, and on-demand work that outbids it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import crucible

app = crucible.App("market")


@app.function(gpu="H100", tier="interruptible", bid=0.5, timeout=120)
def resumable(workdir: str, seconds: float) -> dict[str, str]:
    """Runs ``seconds`` unless a checkpoint from a preempted attempt exists, then finishes
    at once. Its stop hook writes the checkpoint."""
    checkpoint = Path(workdir) / "checkpoint"
    me = os.environ["CRUCIBLE_CONTAINER_ID"]

    def save() -> None:
        checkpoint.write_text(me)

    # The hook first: the test preempts as soon as the marker exists.
    crucible.on_stop(save)
    Path(workdir, f"started-{me}").write_text(str(time.time()))
    if checkpoint.exists():
        return {"container": me, "resumed_from": checkpoint.read_text()}
    time.sleep(seconds)
    return {"container": me, "resumed_from": ""}


rush = crucible.App("rush")


@rush.function(gpu="H100", timeout=60)
def urgent() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


@rush.function(gpu="H100", max_price=0.10, timeout=60)
def stingy() -> str:
    return "never runs: every H100 asks more than $0.10"


@rush.function(gpu="H100", max_carbon_g_per_kwh=50, timeout=60)
def green_only() -> str:
    return "never runs on a host that declares no carbon intensity, or one above 50 g/kWh"
