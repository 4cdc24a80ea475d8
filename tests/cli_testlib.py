"""Helpers of the CLI tests that run `crucible ...` as a user would, against a real exchange
(tests/cli/): the command with only the exchange's URL and a token, and its refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import Exchange

__all__ = ["ROOT", "cli", "refused"]

ROOT = Path(__file__).resolve().parents[1]


def cli(
    ex: Exchange, token: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`crucible ARGS` against ``ex`` as ``token``, no other CRUCIBLE_ setting; stdin is not a
    terminal (``stdin``: its text, else empty)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(
        CRUCIBLE_HOME=str(ex.root / "cli-home"),
        CRUCIBLE_SERVER_URL=ex.url,
        CRUCIBLE_TOKEN=token,
        COLUMNS="200",
    )
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def refused(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one-paragraph error of a refused command (exit 1, no traceback), unwrapped."""
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    text = " ".join(out.stderr.split())
    for needle in needles:
        assert needle in text, text
    return text
