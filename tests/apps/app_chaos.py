"""The function the chaos test calls: its body has a side effect the test reads back."""

from __future__ import annotations

import os
import time

import crucible

app = crucible.App("chaos")


@app.function(timeout=60)
def record(journal: str, x: int) -> int:
    """Append ``x`` to the journal file (one ``O_APPEND`` write, so lines never interleave),
    then return it. The test counts the lines per ``x``: an attempt that ran twice, or a
    call made twice, shows as a count above the call's attempts."""
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    time.sleep(0.02)  # long enough that a kill often lands while calls run
    return x
