"""Plain helpers shared by the agent tests (imported by name: tests/agent is on sys.path under
pytest's default "prepend" import mode; the unusual module name avoids clashes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from crucible.agent.runtime import ProcessRuntime
from crucible.protocol.apps import CodeRef
from crucible.protocol.common import Resources
from crucible.protocol.containers import ContainerAssignment, ContainerReport


def make_assignment(cid: str = "c1", gpu_indices: list[int] | None = None) -> ContainerAssignment:
    return ContainerAssignment(
        container_id=cid,
        function_id="fn1",
        account_id="acct1",
        app_id="app1",
        code=CodeRef(bundle="0" * 64, module="mod", qualname="f"),
        resources=Resources(),
        gpu_indices=gpu_indices or [],
        token=f"container-token-{cid}",
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def report_of(runtime: ProcessRuntime, cid: str) -> ContainerReport | None:
    return next((r for r in runtime.poll() if r.container_id == cid), None)


def wait_exited(runtime: ProcessRuntime, cid: str, timeout_s: float = 5.0) -> ContainerReport:
    def done() -> ContainerReport | None:
        r = report_of(runtime, cid)
        return r if r is not None and r.state == "exited" else None

    report: ContainerReport = wait_for(done, timeout_s, f"{cid} to exit")
    return report


def py(script: str) -> list[str]:
    """A worker command that runs ``script`` with this interpreter."""
    return [sys.executable, "-c", script]
