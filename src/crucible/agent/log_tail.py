"""The last lines a container wrote to its stdout and stderr (its ``log`` file in its
directory): both runtimes put them in a crash's message, and report them with its exit so
that the control plane can store the lines the worker printed too late to send."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TAIL_LINES", "read_log_tail"]

TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
# A reported line is at most this long (the worker ships lines cut at 8,192 characters).
_LINE_MAX = 8192


def read_log_tail(container_dir: Path | None) -> list[str]:
    """Up to :data:`TAIL_LINES` last lines of ``container_dir/log``; [] when there is none."""
    if container_dir is None:
        return []
    try:
        with open(container_dir / "log", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    return [line[:_LINE_MAX] for line in data.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]]
