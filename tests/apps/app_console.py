"""A function the console's browser test runs: it prints what it is given (log lines that
arrive while the logs page is open, some of them hostile markup)."""

from __future__ import annotations

import sys

import crucible

app = crucible.App("console-demo")


@app.function()
def say(text: str) -> str:
    print(text)
    print(f"stderr: {text}", file=sys.stderr)
    return text


@app.function(gpu="H100", timeout=60)
def on_gpu() -> str:
    """Leases an H100 (a fake one in the test): the market records a clearing price."""
    import os

    return os.environ["CRUCIBLE_CONTAINER_ID"]
