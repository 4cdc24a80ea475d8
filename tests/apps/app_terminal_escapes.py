"""Functions whose output is hostile to terminals: escape sequences, bells, a carriage
return, a right-to-left override and Rich markup in what they print and raise."""

from __future__ import annotations

import sys

import crucible

app = crucible.App("hostile")

# Clear the screen, set the window title, ring the bell, overwrite the line, reverse text.
HOSTILE = "\x1b[2J\x1b]0;owned\x07[red]not red[/red]\r\u202eevil\x9b31m"


@app.function()
def shout(n: int) -> int:
    for i in range(n):
        print(f"line {i} {HOSTILE}")
    print(f"stderr {HOSTILE}", file=sys.stderr)
    return n


@app.function(retries=0)
def explode() -> None:
    raise ValueError(f"boom {HOSTILE}")
