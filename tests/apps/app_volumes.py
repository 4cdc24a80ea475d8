"""A function that mounts a volume (tests/e2e/test_volumes_e2e.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import crucible

app = crucible.App("volumes")
scratch = crucible.Volume.from_name("scratch")


@app.function(volumes={"/scratch": scratch}, retries=0)
def write_and_commit(text: str) -> list[str]:
    Path("/scratch/note.txt").write_text(text)
    scratch.commit()
    return sorted(p.name for p in Path("/scratch").iterdir())


@app.function(volumes={"/scratch": scratch}, retries=0)
def read_note() -> str:
    scratch.reload()
    return Path("/scratch/note.txt").read_text()


@app.function(volumes={"/scratch": scratch}, retries=0)
def crash_without_commit(name: str) -> None:
    """Leaves a file its container never commits: it dies (a crashed attempt's checkpoint)."""
    Path("/scratch", name).write_text("not meant to be published")
    os.kill(os.getpid(), signal.SIGKILL)


@app.function(volumes={"/scratch": scratch}, retries=0)
def write_without_commit(name: str) -> None:
    """Writes and returns: the file is committed when the container stops (as Modal does)."""
    Path("/scratch", name).write_text("kept at exit")


@app.function(volumes={"/scratch": scratch}, retries=0)
def commit_what_is_here() -> list[str]:
    scratch.commit()
    return sorted(p.name for p in Path("/scratch").iterdir())


@app.cls(volumes={"/scratch": scratch}, retries=0)
class SlowToStop:
    """Its @exit hook takes longer than the stop grace (CRUCIBLE_STOP_GRACE_S, 1 s in the
    tests): the commit at exit comes after it."""

    @crucible.method()
    def write(self, name: str) -> None:
        Path("/scratch", name).write_text("kept past a slow exit hook")

    @crucible.exit()
    def close(self) -> None:
        time.sleep(3)
