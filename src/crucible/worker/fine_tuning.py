"""What a fine-tune job's container runs: the engine's trainer
(``python -m crucible.inference.finetune``) as a child process, its JSON lines printed to the
job's log (the control plane reads the loss from there), and the model's volume committed at
each checkpoint and at the end, so checkpoints survive a cancel and the adapter is there for
the model's containers."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

from crucible.errors import Error

__all__ = ["run_trainer"]


def _device() -> str:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_trainer(args: list[str], volume: Any = None) -> dict[str, Any]:
    """Run the trainer with ``args`` (its command-line options; ``--device`` is added: cuda
    where the container sees a GPU); return its final ``done`` event. Raises
    :class:`crucible.Error` with the trainer's message when it fails."""
    cmd = [sys.executable, "-m", "crucible.inference.finetune", *args, "--device", _device()]
    done: dict[str, Any] = {}
    error = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)  # the job's log: the loss curve is read from it
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "checkpoint" and volume is not None:
                volume.commit()
            elif event.get("event") == "done":
                done = event
            elif event.get("event") == "error":
                error = str(event.get("message", ""))
        code = proc.wait()
    if code != 0 or not done:
        raise Error(f"the trainer failed (exit status {code}): {error or 'see the job log'}")
    if volume is not None:
        volume.commit()
    return done
