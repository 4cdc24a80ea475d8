"""Shared by the sandbox tests: the bwrap exchange's settings and the skip when this machine
cannot sandbox."""

from __future__ import annotations

import pytest

from crucible.errors import SandboxUnavailableError

# Small limits so the attacks hit them quickly.
SANDBOX_ENV = {
    "CRUCIBLE_RUNTIME": "bwrap",
    "CRUCIBLE_SANDBOX_MAX_PROCESSES": "64",
    "CRUCIBLE_SANDBOX_DISK_MIB": "64",
    # Each test calls new functions: idle containers must free the host's 2 cores quickly.
    "CRUCIBLE_SCALEDOWN_WINDOW_S": "3",
}


def bwrap_or_skip() -> None:
    from crucible.agent.sandbox import check_bwrap

    try:
        check_bwrap()
    except SandboxUnavailableError as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")
