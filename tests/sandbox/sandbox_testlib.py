"""Shared by the sandbox tests: the bwrap exchange's settings and the skip when this machine
cannot sandbox."""

from __future__ import annotations

from typing import Any

import pytest

import crucible
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


def stopped_by_memory(call: Any) -> None:
    """Where the sandbox has a memory cgroup the kernel stops a memory bomb at its limit
    (reason oom); without one, its address space runs out first (MemoryError)."""
    with pytest.raises((MemoryError, crucible.ContainerExitedError)) as caught:
        call.get(timeout=60)
    if isinstance(caught.value, crucible.ContainerExitedError):
        assert "out of memory: killed by the kernel" in str(caught.value)
        limit = int(str(caught.value).split("memory limit (")[1].split(" MiB")[0])
        assert limit >= 256, caught.value  # the bomb's own memory= is part of the limit
