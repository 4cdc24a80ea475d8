"""Helpers of the CLI tests that run `crucible ...` as a user would, against a real exchange
(tests/cli/): the command with only the exchange's URL and a token, and its refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import Exchange

__all__ = ["ROOT", "cli", "crucible", "one_host", "refused"]

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def one_host(root: Path, fake_gpus: str | None = None) -> Iterator[tuple[Exchange, str]]:
    """An exchange in ``root`` with one host, ``host-a`` (``fake_gpus`` like "2xH100"), and
    a token of that host's owner, whose pods it runs."""
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("host-a", fake_gpus=fake_gpus)
        yield ex, ex.owner_token("builder")
    finally:
        ex.close()


def cli(
    ex: Exchange, token: str, *args: str, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`crucible ARGS` against ``ex`` as ``token``, no other CRUCIBLE_ setting; stdin empty
    and not a terminal, or the file descriptor ``stdin`` (a pty's, say)."""
    env = {
        "CRUCIBLE_HOME": str(ex.root / "cli-home"),
        "CRUCIBLE_SERVER_URL": ex.url,
        "CRUCIBLE_TOKEN": token,
    }
    return crucible(*args, env=env, stdin=stdin)


def crucible(
    *args: str, env: dict[str, str], stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`crucible ARGS` with the CRUCIBLE_ settings ``env`` only (and a wide terminal)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env = inherited | {"COLUMNS": "200"} | env
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
    )


def refused(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one-paragraph error of a refused command (exit 1, no traceback), unwrapped."""
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    text = " ".join(out.stderr.split())
    for needle in needles:
        assert needle in text, text
    return text
