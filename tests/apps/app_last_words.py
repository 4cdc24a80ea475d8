"""Functions that print and die at once, before the worker's next batch of log lines (it
sends about every half second): by ``os._exit`` and by a segfault."""

from __future__ import annotations

import ctypes
import os
import sys

import crucible

app = crucible.App("last-words")


@app.function()
def die(how: str) -> None:
    print(f"early line of {how}", flush=True)
    print(f"last words before {how}", flush=True)
    sys.stderr.write(f"and on stderr before {how}\n")
    sys.stderr.flush()
    if how == "exit":
        os._exit(3)
    ctypes.string_at(0)  # reads address 0: SIGSEGV
